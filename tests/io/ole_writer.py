"""A minimal writer of OLE2 compound files (Microsoft's Compound File Binary format, version 3:
512-byte sectors) for the tests: olefile only reads them, and Zeiss Xradia TXRM/TXM files are
such files.

The layout follows the published format ([MS-CFB]): a 512-byte header with the first 109 FAT
sector numbers, the FAT (one uint32 per sector: the next sector of its chain), the directory
(128-byte entries, siblings in a binary search tree ordered by name length and then by the
upper-case name), the mini stream (64-byte mini sectors, for streams under 4096 bytes) with its
mini FAT, and the regular streams.
"""

from __future__ import annotations

import struct
from pathlib import Path

SECTOR, MINI, CUTOFF = 512, 64, 4096
FREE, END, FATSECT, NONE = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF
MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


class _Entry:
    def __init__(self, name: str, kind: int, data: bytes = b"") -> None:
        self.name, self.kind, self.data = name, kind, data  # kind: 1 storage, 2 stream, 5 root
        self.children: list[_Entry] = []
        self.left = self.right = self.child = NONE
        self.start, self.size = END, len(data)

    def key(self) -> tuple[int, str]:
        return len(self.name), self.name.upper()

    def pack(self) -> bytes:
        name = self.name.encode("utf-16-le") + b"\x00\x00"
        return struct.pack(
            "<64sHBBIII16sIQQIQ",
            name,
            len(name),
            self.kind,
            1,  # black
            self.left,
            self.right,
            self.child,
            b"\x00" * 16,
            0,
            0,
            0,
            self.start,
            self.size,
        )


def _tree(entries: list[_Entry], index: dict[int, int]) -> int:
    """Link ``entries`` (sorted) as a balanced search tree; the id of its root."""
    if not entries:
        return NONE
    mid = len(entries) // 2
    root = entries[mid]
    root.left = _tree(entries[:mid], index)
    root.right = _tree(entries[mid + 1 :], index)
    return index[id(root)]


def _chain(fat: list[int], start: int, count: int) -> None:
    for k in range(count):
        fat[start + k] = start + k + 1 if k < count - 1 else END


def _sectors(data: bytes, size: int) -> list[bytes]:
    return [data[k : k + size].ljust(size, b"\x00") for k in range(0, len(data), size)]


def write_ole(path: Path, streams: dict[str, bytes]) -> None:
    """Write ``streams`` (``"Storage/Sub/Name"`` -> bytes) as an OLE2 compound file."""
    root = _Entry("Root Entry", 5)
    entries = [root]
    for full, data in streams.items():
        parent = root
        *folders, name = full.split("/")
        for folder in folders:
            found = next((c for c in parent.children if c.name == folder), None)
            if found is None:
                found = _Entry(folder, 1)
                parent.children.append(found)
                entries.append(found)
            parent = found
        leaf = _Entry(name, 2, data)
        parent.children.append(leaf)
        entries.append(leaf)
    index = {id(e): k for k, e in enumerate(entries)}
    for entry in entries:
        entry.child = _tree(sorted(entry.children, key=_Entry.key), index)

    mini_stream, mini_fat = b"", []
    big = [e for e in entries if e.kind == 2 and e.size >= CUTOFF]
    for entry in (e for e in entries if e.kind == 2 and 0 < e.size < CUTOFF):
        entry.start = len(mini_stream) // MINI
        n = -(-entry.size // MINI)
        mini_fat.extend([0] * n)
        _chain(mini_fat, entry.start, n)
        mini_stream += entry.data.ljust(n * MINI, b"\x00")

    layout: list[bytes] = []  # every sector but the FAT, in file order
    fat: list[int] = []

    def place(chunks: list[bytes]) -> int:
        if not chunks:
            return END
        start = len(layout)
        layout.extend(chunks)
        fat.extend([0] * len(chunks))
        _chain(fat, start, len(chunks))
        return start

    root.start, root.size = place(_sectors(mini_stream, SECTOR)), len(mini_stream)
    if not mini_stream:
        root.start = END
    mini_fat_bytes = struct.pack(f"<{len(mini_fat)}I", *mini_fat)
    mini_fat_start = place(_sectors(mini_fat_bytes, SECTOR))
    n_mini_fat = -(-len(mini_fat_bytes) // SECTOR)
    for entry in big:
        entry.start = place(_sectors(entry.data, SECTOR))
    directory = b"".join(e.pack() for e in entries)
    free = _Entry("", 0).pack()
    directory += free * (-len(entries) % (SECTOR // 128))
    dir_start = place(_sectors(directory, SECTOR))

    n_fat = 1
    while n_fat * SECTOR // 4 < len(layout) + n_fat:
        n_fat += 1
    first_fat = len(layout)
    fat.extend([FATSECT] * n_fat)
    fat.extend([FREE] * (n_fat * SECTOR // 4 - len(fat)))
    difat = [first_fat + k for k in range(n_fat)] + [FREE] * (109 - n_fat)
    header = struct.pack(
        "<8s16sHHHHH6sIIIIIIIII109I",
        MAGIC,
        b"\x00" * 16,
        0x3E,
        3,
        0xFFFE,
        9,
        6,
        b"\x00" * 6,
        0,
        n_fat,
        dir_start,
        0,
        CUTOFF,
        mini_fat_start,
        n_mini_fat,
        END,
        0,
        *difat,
    )
    fat_bytes = struct.pack(f"<{len(fat)}I", *fat)
    path.write_bytes(header + b"".join(layout) + fat_bytes)
