//! A layer's tar stream, read in place: headers parsed out of the decoded chunks, and file
//! contents handed out as slices of them.
//!
//! Owns: the tar framing over any `BufRead`: 512-byte blocks, header checksums (unsigned or
//! signed, as Go's archive/tar), octal and base-256 numbers, the ustar name prefix, GNU long
//! names and link names (`L`, `K`), PAX local records (`x`; `path`, `linkpath` and `size`
//! applied here, the others handed on), GNU sparse maps (`S`: holes read as zeros) and the
//! end-of-archive block. An entry's contents come out through [`Contents`], a `BufRead` over
//! the input's own buffer, so they go from the decompressor's chunk straight into `write(2)`
//! with no copy in between (the `tar` crate's `Read` API copied every byte once more and
//! zeroed a 32 KiB buffer per entry). Special records are bounded by [`MAX_SPECIAL`] (as Go's
//! archive/tar). Where parsers disagree it follows Go's archive/tar (what umoci and containerd
//! use): PAX records win over GNU long names and the header's fields, and links, devices,
//! directories and FIFOs have no contents whatever their size field says. It never interprets
//! names, kinds or ownership beyond the framing (that is `super::header`), refuses what it
//! cannot read faithfully (PAX sparse files) instead of guessing, and never touches the
//! filesystem.

use std::collections::VecDeque;
use std::io::{self, BufRead, Read};

/// Tar's block size.
const BLOCK: usize = 512;
/// Largest GNU long name, long link name or PAX record set (Go's archive/tar limit).
pub(super) const MAX_SPECIAL: u64 = 1 << 20;
/// What a hole of a sparse file reads as.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Why the stream is not a tar archive this reader can follow.
#[derive(Debug, thiserror::Error)]
pub(super) enum TarError {
    #[error("tar header of {name:?}: checksum mismatch")]
    Checksum { name: String },
    #[error("tar header of {name:?}: unreadable {field} field")]
    Field { name: String, field: &'static str },
    #[error("tar: a {what} record of {size} bytes is over the {MAX_SPECIAL}-byte limit")]
    SpecialTooLarge { what: &'static str, size: u64 },
    #[error("tar: two {what} records for the same entry")]
    Repeated { what: &'static str },
    #[error("tar: malformed PAX record {record:?}")]
    Pax { record: String },
    #[error("tar entry {name:?}: {reason}")]
    Sparse { name: String, reason: &'static str },
    #[error("tar: a {what} record is not followed by the entry it describes")]
    Dangling { what: &'static str },
    #[error("tar: the stream ends inside {what}")]
    Truncated { what: &'static str },
}

impl From<TarError> for io::Error {
    fn from(e: TarError) -> io::Error {
        let kind = match e {
            TarError::Truncated { .. } => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// One entry's header, with its long name, long link name and PAX records applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Header {
    /// PAX `path`, else a GNU long name, else the ustar prefix and name.
    pub path: Vec<u8>,
    /// PAX `linkpath`, else a GNU long link name, else the header's; empty when none.
    pub link: Vec<u8>,
    /// The type flag byte (`b'0'`, `b'5'`, ...).
    pub typeflag: u8,
    pub mode: u64,
    pub uid: u64,
    pub gid: u64,
    /// Seconds (PAX `mtime`, with its fraction, is among [`Header::pax`]).
    pub mtime: u64,
    /// Bytes of the entry's contents (a sparse file's full size, holes included).
    pub size: u64,
    /// The entry's PAX records other than `path`, `linkpath` and `size`, in order.
    pub pax: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Pieces of the current entry's contents still to come.
#[derive(Debug, Clone, Copy)]
enum Run {
    /// This many bytes stored in the archive.
    Stored(u64),
    /// This many zero bytes (a hole of a sparse file).
    Hole(u64),
}

/// Reads a tar stream entry by entry. The caller reads each entry's [`Contents`] as far as it
/// wants; [`Archive::next`] skips the rest.
pub(crate) struct Archive<R> {
    input: R,
    /// The current entry's contents still to hand out.
    runs: VecDeque<Run>,
    /// Padding after the current entry's stored bytes, to the next block.
    padding: u64,
    /// The end-of-archive block was read.
    ended: bool,
}

impl<R: BufRead> Archive<R> {
    pub(crate) fn new(input: R) -> Archive<R> {
        Archive {
            input,
            runs: VecDeque::new(),
            padding: 0,
            ended: false,
        }
    }

    /// The next entry's header, after skipping what is left of the current one; `None` at the
    /// end of the archive (a zero block, or the end of the stream on a block boundary).
    pub(crate) fn next(&mut self) -> io::Result<Option<Header>> {
        if self.ended {
            return Ok(None);
        }
        self.skip_current()?;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Option<Vec<(Vec<u8>, Vec<u8>)>> = None;
        loop {
            let mut block = [0u8; BLOCK];
            if !self.read_block(&mut block)? || block.iter().all(|b| *b == 0) {
                self.ended = true;
                let pending = [
                    (long_name.is_some(), "GNU long name"),
                    (long_link.is_some(), "GNU long link name"),
                    (pax.is_some(), "PAX"),
                ];
                return match pending.into_iter().find(|(present, _)| *present) {
                    Some((_, what)) => Err(TarError::Dangling { what }.into()),
                    None => Ok(None),
                };
            }
            let raw = Raw(&block);
            raw.check_sum()?;
            let size = raw.number(124..136, "size")?;
            match raw.typeflag() {
                b'L' => {
                    let what = "GNU long name";
                    set_once(&mut long_name, self.special(size, what)?, what)?;
                }
                b'K' => {
                    let what = "GNU long link name";
                    set_once(&mut long_link, self.special(size, what)?, what)?;
                }
                b'x' => {
                    let records = parse_pax(&self.special(size, "PAX")?)?;
                    set_once(&mut pax, records, "PAX")?;
                }
                _ => return self.entry(raw, size, long_name, long_link, pax).map(Some),
            }
        }
    }

    /// The current entry's contents (what of them is not read yet).
    pub(crate) fn contents(&mut self) -> Contents<'_, R> {
        Contents { archive: self }
    }

    /// Everything after the end-of-archive block (its padding and whatever follows).
    pub(crate) fn into_rest(self) -> R {
        self.input
    }

    /// Builds the entry of header `raw` and starts its contents.
    fn entry(
        &mut self,
        raw: Raw<'_>,
        size: u64,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
        pax: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    ) -> io::Result<Header> {
        let mut header = Header {
            path: long_name.map_or_else(|| raw.path(), strip_nul),
            link: long_link.map_or_else(|| until_nul(&raw.0[157..257]).to_vec(), strip_nul),
            typeflag: raw.typeflag(),
            mode: raw.number(100..108, "mode")?,
            uid: raw.number(108..116, "uid")?,
            gid: raw.number(116..124, "gid")?,
            mtime: raw.number(136..148, "mtime")?,
            size,
            pax: Vec::new(),
        };
        let mut stored = size;
        for (key, value) in pax.unwrap_or_default() {
            match key.as_slice() {
                b"path" => header.path = value,
                b"linkpath" => header.link = value,
                b"size" => {
                    stored = decimal(&value).ok_or_else(|| TarError::Pax {
                        record: format!("size={}", String::from_utf8_lossy(&value)),
                    })?;
                    header.size = stored;
                }
                k if k.starts_with(b"GNU.sparse.") => {
                    return Err(TarError::Sparse {
                        name: lossy(&header.path),
                        reason: "PAX sparse files are not supported",
                    }
                    .into())
                }
                _ => header.pax.push((key, value)),
            }
        }
        if matches!(header.typeflag, b'1'..=b'6') {
            // Links, devices, directories and FIFOs carry no contents whatever their size
            // field says (as Go's archive/tar reads them).
            (stored, header.size) = (0, 0);
        }
        self.runs.clear();
        if header.typeflag == b'S' {
            header.size = self.sparse_runs(&raw, &header.path, stored)?;
        } else if stored > 0 {
            self.runs.push_back(Run::Stored(stored));
        }
        self.padding = padding(stored);
        Ok(header)
    }

    /// Reads a GNU sparse map (the header's four slots and any extension blocks) into the
    /// current runs; the file's full size.
    fn sparse_runs(&mut self, raw: &Raw<'_>, path: &[u8], stored: u64) -> io::Result<u64> {
        let bad = |reason| TarError::Sparse {
            name: lossy(path),
            reason,
        };
        let real_size = raw.number(483..495, "sparse real size")?;
        let mut slots: Vec<(u64, u64)> = Vec::new();
        let mut read_slots = |area: &[u8], count: usize| -> io::Result<()> {
            for i in 0..count {
                let slot = &area[i * 24..(i + 1) * 24];
                if slot[0] == 0 || slot[12] == 0 {
                    continue;
                }
                let name = lossy(path);
                let field = |range: std::ops::Range<usize>| {
                    parse_number(&slot[range]).ok_or_else(|| TarError::Field {
                        name: name.clone(),
                        field: "sparse map",
                    })
                };
                slots.push((field(0..12)?, field(12..24)?));
            }
            Ok(())
        };
        read_slots(&raw.0[386..482], 4)?;
        let mut extended = raw.0[482] != 0;
        while extended {
            let mut block = [0u8; BLOCK];
            if !self.read_block(&mut block)? {
                return Err(TarError::Truncated {
                    what: "a sparse map",
                }
                .into());
            }
            read_slots(&block[..504], 21)?;
            extended = block[504] != 0;
        }
        let (mut at, mut data) = (0u64, 0u64);
        for (offset, len) in slots {
            if offset < at {
                return Err(bad("sparse map runs out of order or overlapping").into());
            }
            if offset > at {
                self.runs.push_back(Run::Hole(offset - at));
            }
            if len > 0 {
                self.runs.push_back(Run::Stored(len));
            }
            at = offset
                .checked_add(len)
                .ok_or_else(|| bad("sparse map past the largest size"))?;
            data = data
                .checked_add(len)
                .ok_or_else(|| bad("sparse map past the largest size"))?;
        }
        if data != stored {
            return Err(bad("sparse map does not add up to the stored size").into());
        }
        if at > real_size {
            return Err(bad("sparse map runs past the file's size").into());
        }
        if real_size > at {
            self.runs.push_back(Run::Hole(real_size - at));
        }
        Ok(real_size)
    }

    /// The contents of a special record (long name, PAX), read whole.
    fn special(&mut self, size: u64, what: &'static str) -> io::Result<Vec<u8>> {
        if size > MAX_SPECIAL {
            return Err(TarError::SpecialTooLarge { what, size }.into());
        }
        let mut data = vec![0; size as usize];
        self.read_exact_or(&mut data, what)?;
        self.skip(padding(size), what)?;
        Ok(data)
    }

    /// Skips the rest of the current entry's stored bytes and its padding.
    fn skip_current(&mut self) -> io::Result<()> {
        while let Some(run) = self.runs.pop_front() {
            if let Run::Stored(n) = run {
                self.skip(n, "an entry's contents")?;
            }
        }
        let padding = std::mem::take(&mut self.padding);
        self.skip(padding, "an entry's padding")
    }

    /// Reads one block; `false` at the end of the stream before its first byte.
    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> io::Result<bool> {
        if self.input.fill_buf()?.is_empty() {
            return Ok(false);
        }
        self.read_exact_or(block, "a header")?;
        Ok(true)
    }

    fn read_exact_or(&mut self, out: &mut [u8], what: &'static str) -> io::Result<()> {
        self.input.read_exact(out).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => TarError::Truncated { what }.into(),
            _ => e,
        })
    }

    fn skip(&mut self, mut n: u64, what: &'static str) -> io::Result<()> {
        while n > 0 {
            let available = self.input.fill_buf()?.len();
            if available == 0 {
                return Err(TarError::Truncated { what }.into());
            }
            let take = available.min(usize::try_from(n).unwrap_or(usize::MAX));
            self.input.consume(take);
            n -= take as u64;
        }
        Ok(())
    }
}

/// The current entry's contents, as a `BufRead` whose buffer is the input's own (a hole reads
/// from a static zero buffer). Ends at the entry's end; a stream that ends before is an error.
pub(crate) struct Contents<'a, R> {
    archive: &'a mut Archive<R>,
}

impl<R: BufRead> BufRead for Contents<'_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let archive = &mut *self.archive;
        while let Some(Run::Stored(0) | Run::Hole(0)) = archive.runs.front() {
            archive.runs.pop_front();
        }
        match archive.runs.front().copied() {
            None => Ok(&[]),
            Some(Run::Hole(n)) => Ok(&ZEROS[..ZEROS.len().min(n as usize)]),
            Some(Run::Stored(n)) => {
                let buf = archive.input.fill_buf()?;
                if buf.is_empty() {
                    return Err(TarError::Truncated {
                        what: "an entry's contents",
                    }
                    .into());
                }
                Ok(&buf[..buf.len().min(usize::try_from(n).unwrap_or(usize::MAX))])
            }
        }
    }

    fn consume(&mut self, amount: usize) {
        let archive = &mut *self.archive;
        match archive.runs.front_mut() {
            Some(Run::Stored(n)) => {
                let amount = (amount as u64).min(*n);
                *n -= amount;
                archive.input.consume(amount as usize);
            }
            Some(Run::Hole(n)) => *n -= (amount as u64).min(*n),
            None => {}
        }
    }
}

impl<R: BufRead> Read for Contents<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let buf = self.fill_buf()?;
        let n = buf.len().min(out.len());
        out[..n].copy_from_slice(&buf[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// A header block.
struct Raw<'a>(&'a [u8; BLOCK]);

impl Raw<'_> {
    fn typeflag(&self) -> u8 {
        self.0[156]
    }

    /// The name as the header holds it (before any long name or PAX record).
    fn path(&self) -> Vec<u8> {
        let name = until_nul(&self.0[..100]);
        // ustar ("ustar\0" "00") has a prefix field; GNU ("ustar  \0") keeps other fields there.
        let prefix = match &self.0[257..265] {
            b"ustar\x0000" => until_nul(&self.0[345..500]),
            _ => &[],
        };
        if prefix.is_empty() {
            return name.to_vec();
        }
        [prefix, b"/", name].concat()
    }

    fn number(&self, range: std::ops::Range<usize>, field: &'static str) -> io::Result<u64> {
        parse_number(&self.0[range]).ok_or_else(|| {
            TarError::Field {
                name: lossy(&self.path()),
                field,
            }
            .into()
        })
    }

    /// Checks the header's checksum: the sum of its bytes with the checksum field as spaces,
    /// as unsigned bytes or (old writers) signed ones.
    fn check_sum(&self) -> io::Result<()> {
        // The checksum field counts as eight spaces.
        let spaces = 8 * u64::from(b' ');
        let field = 148..156;
        let stored = parse_number(&self.0[field.clone()]);
        let unsigned = |bytes: &[u8]| bytes.iter().map(|b| u64::from(*b)).sum::<u64>();
        let sum = unsigned(self.0) - unsigned(&self.0[field.clone()]) + spaces;
        if stored == Some(sum) {
            return Ok(());
        }
        let signed = |bytes: &[u8]| bytes.iter().map(|b| i64::from(*b as i8)).sum::<i64>();
        let sum = signed(self.0) - signed(&self.0[field]) + spaces as i64;
        if stored.map(i64::try_from) == Some(Ok(sum)) {
            return Ok(());
        }
        Err(TarError::Checksum {
            name: lossy(&self.path()),
        }
        .into())
    }
}

/// A numeric header field: octal digits (spaces and NULs around them ignored, none at all is
/// 0, as Go's archive/tar), or base-256 when its first byte's top bit is set (positive only).
fn parse_number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        if field[0] & 0x40 != 0 {
            return None;
        }
        let mut value: u64 = u64::from(field[0] & 0x3f);
        for b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(value);
    }
    let trimmed = trim_matches(field, |b| b == b' ' || b == 0);
    let text = until_nul(trimmed);
    let mut value: u64 = 0;
    for b in text {
        if !(b'0'..=b'7').contains(b) {
            return None;
        }
        value = value.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(value)
}

/// PAX records: `<length> <key>=<value>\n`, the length counting the whole record.
fn parse_pax(data: &[u8]) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut records = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let bad = |record: &[u8]| TarError::Pax {
            record: String::from_utf8_lossy(&record[..record.len().min(64)]).into_owned(),
        };
        let space = rest
            .iter()
            .position(|b| *b == b' ')
            .ok_or_else(|| bad(rest))?;
        let len = decimal(&rest[..space])
            .and_then(|l| usize::try_from(l).ok())
            .filter(|l| *l > space + 1 && *l <= rest.len())
            .ok_or_else(|| bad(rest))?;
        let record = &rest[space + 1..len];
        let Some((b'\n', body)) = record.split_last() else {
            return Err(bad(record).into());
        };
        let eq = body
            .iter()
            .position(|b| *b == b'=')
            .ok_or_else(|| bad(body))?;
        records.push((body[..eq].to_vec(), body[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(records)
}

/// Keeps a special record for the next entry; a second one of the same kind is an error.
fn set_once<T>(slot: &mut Option<T>, value: T, what: &'static str) -> io::Result<()> {
    if slot.is_some() {
        return Err(TarError::Repeated { what }.into());
    }
    *slot = Some(value);
    Ok(())
}

/// `field` without the leading and trailing bytes that `strip` matches.
fn trim_matches(field: &[u8], strip: impl Fn(u8) -> bool) -> &[u8] {
    let start = field.iter().position(|b| !strip(*b)).unwrap_or(field.len());
    let end = field
        .iter()
        .rposition(|b| !strip(*b))
        .map_or(start, |i| i + 1);
    &field[start..end]
}

fn decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn until_nul(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    &field[..end]
}

/// A long name's contents without its trailing NUL.
fn strip_nul(mut name: Vec<u8>) -> Vec<u8> {
    let end = until_nul(&name).len();
    name.truncate(end);
    name
}

fn lossy(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

#[cfg(test)]
#[path = "archive_tests.rs"]
mod tests;
