#!/usr/bin/env bash
# Regenerates the binary seeds of fuzz/seeds/{tar,unpack_tree,gzip}/ with GNU tar, gzip and
# Python's tarfile (for names GNU tar will not write: `..`, whiteouts under files). The text
# seeds (references and image sources, manifests, mountinfo, settings, image files) are written
# by hand. Needs root (owners, a FIFO, ACLs) and Debian's python3; run from anywhere:
# `bash fuzz/make-seeds.sh`.
set -euo pipefail
seeds="$(cd "$(dirname "$0")" && pwd)/seeds"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$seeds/tar" "$seeds/unpack_tree" "$seeds/gzip"
cd "$work"

# A small tree with every kind GNU tar writes, then archives of it in each format.
mkdir -p t/etc/deep t/usr/lib
echo hello > t/etc/hostname
printf 'root:x:0:0:root:/root:/bin/sh\n' > t/etc/passwd
ln t/etc/passwd t/etc/passwd.hard
ln -s ../usr/lib t/etc/lib
ln -s /etc/hostname t/abs-link
mkfifo t/fifo
long=$(printf 'n%.0s' $(seq 1 150))
echo long > "t/usr/lib/$long"
ln -s "$(printf 'target-%.0s' $(seq 1 20))" t/usr/long-link
chown 1000:1000 t/etc/hostname
chmod 4755 t/etc/passwd
setfacl -m u:1000:rx t/usr/lib 2>/dev/null || true
setfacl -d -m g:100:rwx t/usr/lib 2>/dev/null || true
truncate -s 200000 t/sparse
printf 'data in the middle' | dd of=t/sparse bs=1 seek=70000 conv=notrunc status=none
touch -d '2020-01-02 03:04:05.123456789' t/etc/hostname

opts=(-C t -b 1 --sort=name)
tar "${opts[@]}" --format=ustar -cf "$seeds/tar/ustar.tar" etc fifo abs-link
tar "${opts[@]}" --format=gnu -cf "$seeds/tar/gnu-long-names.tar" usr etc/lib
tar "${opts[@]}" --format=gnu --sparse -cf "$seeds/tar/gnu-sparse.tar" sparse
tar "${opts[@]}" --format=pax --sparse -cf "$seeds/tar/pax-sparse.tar" sparse
tar "${opts[@]}" --format=pax --acls --xattrs -cf "$seeds/tar/pax-acls.tar" usr etc
tar "${opts[@]}" --format=v7 -cf "$seeds/tar/v7.tar" etc/hostname etc/lib

# Layers as image builders and odd writers make them: whiteouts, opaque directories, hard
# links, entries below symlinks, names that try to leave the root, base-256 numbers.
/usr/bin/python3 - "$seeds" <<'EOF'
import io, sys, tarfile
seeds = sys.argv[1]

def tar(entries, fmt=tarfile.PAX_FORMAT):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as t:
        for name, kind, extra in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1700000000
            data = b""
            if kind == "file":
                data = extra or b"x\n"
                info.size = len(data)
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, extra
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, extra
            elif kind == "char":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            elif kind == "big":
                info.uid = info.gid = 0o7777777 + 1
                info.size = len(b"big\n")
                data = b"big\n"
            elif kind == "pax":
                info.pax_headers = extra
                info.size = 2
                data = b"p\n"
            t.addfile(info, io.BytesIO(data))
    blob = out.getvalue()
    # tarfile pads to 10 KiB; the end of the archive is its two zero blocks.
    end = len(blob.rstrip(b"\0"))
    end += (-end) % 512
    return blob[: end + 1024]

def write(path, blob):
    with open(f"{seeds}/{path}", "wb") as f:
        f.write(blob)

lower = tar([
    ("etc", "dir", None), ("etc/f", "file", b"lower file\n"), ("etc/keep", "file", None),
    ("usr", "dir", None), ("usr/lib", "dir", None), ("usr/lib/x", "file", None),
    ("lib", "sym", "usr/lib"), ("opt", "dir", None), ("opt/old", "file", None),
])
upper = tar([
    ("etc/.wh.keep", "file", b""), ("etc/f/.wh.x", "file", b""), ("etc/link", "hard", "etc/f"),
    ("lib/y", "file", None), ("opt/.wh..wh..opq", "file", b""), ("opt/new", "file", None),
    ("missing/.wh.z", "file", b""),
])
escapes = tar([
    ("up", "sym", "../../.."), ("up/escaped", "file", None), ("abs", "sym", "/"),
    ("abs/etc/escaped", "file", None), ("../../dotdot", "file", None), ("/absolute", "file", None),
    ("d", "dir", None), ("d/..", "dir", None), ("hard", "hard", "../../outside/file"),
    ("dev", "char", None), ("big", "big", None),
])
usrmerge = tar([
    ("bin", "dir", None), ("bin/sh", "file", None), ("usr", "dir", None),
    ("usr/bin", "dir", None), ("bin", "sym", "usr/bin"), ("bin/ls", "file", None),
])
pax = tar([("p", "pax", {"path": "renamed/by/pax", "mtime": "1.5", "uid": "42", "gid": "43",
                          "SCHILY.xattr.user.k": "v", "SCHILY.xattr.trusted.overlay.opaque": "y",
                          "SCHILY.acl.access": "user::rw-"})])
gnu = tar([("g" * 120, "file", None), ("l", "sym", "t" * 120), ("big", "big", None)],
          tarfile.GNU_FORMAT)

# Inputs that crashed a target once (each has a unit test beside its fix).
two_signs = tar([("f", "pax", {"mtime": "--9223372036854775808"})])

for name, blob in [("escapes.tar", escapes), ("usrmerge.tar", usrmerge), ("pax-records.tar", pax),
                   ("gnu-base256.tar", gnu), ("whiteouts.tar", upper),
                   ("pax-mtime-two-signs.tar", two_signs)]:
    write(f"tar/{name}", blob)
    write(f"unpack_tree/{name}", b"\0" + blob)
for name in ["ustar.tar", "gnu-long-names.tar", "gnu-sparse.tar", "pax-acls.tar"]:
    write(f"unpack_tree/{name}", b"\0" + open(f"{seeds}/tar/{name}", "rb").read())
# Two layers: the first byte is the lower layer's length in blocks.
assert len(lower) % 512 == 0 and len(lower) // 512 < 256
write("unpack_tree/two-layers.tar", bytes([len(lower) // 512]) + lower + upper)
write("unpack_tree/two-layers-usrmerge.tar", bytes([len(lower) // 512]) + lower + usrmerge)
EOF

# Gzip: the first byte is the reader's buffer size. One member; two members with zero padding
# (tape blocks); every optional header field (name, comment, extra, header CRC).
gz() { printf '\x07'; cat; }
gzip -9 -c "$seeds/tar/ustar.tar" | gz > "$seeds/gzip/one-member.gz"
{ gzip -c "$seeds/tar/ustar.tar"; printf 'second member\n' | gzip -n -c; head -c 1000 /dev/zero; } \
    | gz > "$seeds/gzip/two-members-padded.gz"
printf '' | gzip -n -c | gz > "$seeds/gzip/empty-member.gz"
/usr/bin/python3 - "$seeds" <<'EOF'
import struct, sys, zlib
seeds = sys.argv[1]
data = b"every header field\n" * 20
deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
body = deflate.compress(data) + deflate.flush()
head = bytes([0x1F, 0x8B, 8, 2 | 4 | 8 | 16]) + struct.pack("<I", 0) + bytes([2, 3])
head += struct.pack("<H", 4) + b"ab\x01\x02" + b"layer.tar\0" + b"a comment\0"
head += struct.pack("<H", zlib.crc32(head) & 0xFFFF)
member = head + body + struct.pack("<II", zlib.crc32(data), len(data))
with open(f"{seeds}/gzip/every-field.gz", "wb") as f:
    f.write(b"\x01" + member + member)
EOF
ls -l "$seeds"/tar "$seeds"/unpack_tree "$seeds"/gzip
