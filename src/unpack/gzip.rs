//! Gzip layers: the members' framing (RFC 1952) read here, their deflate data inflated by
//! flate2, and no CRC-32.
//!
//! Owns: reading one or more concatenated gzip members (as `docker`/`containerd` accept them:
//! a second member right after the first; after the last, nothing but zero padding, which GNU
//! gzip and zlib accept too) into one stream, with every header field parsed and checked
//! (magic, method, reserved flags, extra field, name, comment, header CRC present) and each
//! member's length checked against its trailer's ISIZE. The trailer's CRC-32 is not computed:
//! every byte that comes out is hashed into the diff ID, which must match the image config
//! before a layer is kept, so the CRC would check nothing that sha256 does not. Why not
//! flate2's `MultiGzDecoder`: it refuses zero padding after the last member ("invalid gzip
//! header"); it is no faster (`BENCHMARKS.md`, 2026-12-07). It never writes anything.

use std::io::{self, BufRead, Read};

use flate2::bufread::DeflateDecoder;

const FTEXT: u8 = 1;
const FHCRC: u8 = 2;
const FEXTRA: u8 = 4;
const FNAME: u8 = 8;
const FCOMMENT: u8 = 16;

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("gzip: {what}"))
}

/// Where the reader stands.
enum State<R: BufRead> {
    /// Before a member's header; `first` before the first one (which must be there).
    Header { input: R, first: bool },
    /// In a member's deflate data, `len` bytes out so far.
    Body {
        inflate: DeflateDecoder<R>,
        len: u64,
    },
    /// After the last member.
    Done,
    /// After an error (the input is no longer where a member starts).
    Failed,
}

/// A multi-member gzip stream, decompressed.
pub(crate) struct MultiGz<R: BufRead> {
    state: State<R>,
}

impl<R: BufRead> MultiGz<R> {
    pub(crate) fn new(input: R) -> MultiGz<R> {
        MultiGz {
            state: State::Header { input, first: true },
        }
    }

    /// The compressed input, until the stream ended or failed.
    pub(super) fn get_mut(&mut self) -> Option<&mut R> {
        match &mut self.state {
            State::Header { input, .. } => Some(input),
            State::Body { inflate, .. } => Some(inflate.get_mut()),
            State::Done | State::Failed => None,
        }
    }
}

impl<R: BufRead> Read for MultiGz<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            match std::mem::replace(&mut self.state, State::Failed) {
                State::Header { mut input, first } => {
                    if !first {
                        match input.fill_buf()?.first() {
                            None => {
                                self.state = State::Done;
                                return Ok(0);
                            }
                            Some(0) => {
                                zero_padding(&mut input)?;
                                self.state = State::Done;
                                return Ok(0);
                            }
                            Some(_) => {}
                        }
                    }
                    header(&mut input)?;
                    self.state = State::Body {
                        inflate: DeflateDecoder::new(input),
                        len: 0,
                    };
                }
                State::Body { mut inflate, len } => {
                    let n = inflate.read(out)?;
                    if n > 0 {
                        self.state = State::Body {
                            inflate,
                            len: len + n as u64,
                        };
                        return Ok(n);
                    }
                    // The member's deflate data ended: its trailer, then maybe another member.
                    let mut input = inflate.into_inner();
                    let mut trailer = [0u8; 8];
                    input
                        .read_exact(&mut trailer)
                        .map_err(|_| invalid("the stream ends inside a member's trailer"))?;
                    let isize =
                        u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
                    if isize != len as u32 {
                        return Err(invalid(&format!(
                            "a member inflated to {len} bytes, its trailer says {isize} (mod 2^32)"
                        )));
                    }
                    self.state = State::Header {
                        input,
                        first: false,
                    };
                }
                State::Done => {
                    self.state = State::Done;
                    return Ok(0);
                }
                State::Failed => return Err(invalid("read after an error")),
            }
        }
    }
}

/// Reads the zero bytes some writers pad a stream with after its last member (tape block
/// sizes; GNU gzip and zlib accept them) to the end: anything else in them is an error.
fn zero_padding(input: &mut impl BufRead) -> io::Result<()> {
    loop {
        let chunk = input.fill_buf()?;
        if chunk.is_empty() {
            return Ok(());
        }
        if chunk.iter().any(|&b| b != 0) {
            return Err(invalid(
                "bytes other than zero padding after the last member",
            ));
        }
        let n = chunk.len();
        input.consume(n);
    }
}

/// Reads and checks one member's header, leaving `input` at its deflate data.
fn header(input: &mut impl BufRead) -> io::Result<()> {
    let mut fixed = [0u8; 10];
    input
        .read_exact(&mut fixed)
        .map_err(|_| invalid("the stream ends inside a member's header"))?;
    if fixed[0..2] != [0x1f, 0x8b] {
        return Err(invalid("not a gzip member (bad magic bytes)"));
    }
    if fixed[2] != 8 {
        return Err(invalid(&format!(
            "compression method {} (only 8, deflate)",
            fixed[2]
        )));
    }
    let flags = fixed[3];
    if flags & !(FTEXT | FHCRC | FEXTRA | FNAME | FCOMMENT) != 0 {
        return Err(invalid("reserved header flags set"));
    }
    if flags & FEXTRA != 0 {
        let mut len = [0u8; 2];
        input
            .read_exact(&mut len)
            .map_err(|_| invalid("the stream ends inside the extra field"))?;
        let len = u16::from_le_bytes(len) as u64;
        let skipped = io::copy(&mut input.take(len), &mut io::sink())?;
        if skipped != len {
            return Err(invalid("the stream ends inside the extra field"));
        }
    }
    for (flag, what) in [(FNAME, "file name"), (FCOMMENT, "comment")] {
        if flags & flag != 0 {
            let mut text = Vec::new();
            input.read_until(0, &mut text)?;
            if text.last() != Some(&0) {
                return Err(invalid(&format!("the stream ends inside the {what}")));
            }
        }
    }
    if flags & FHCRC != 0 {
        let mut crc = [0u8; 2];
        input
            .read_exact(&mut crc)
            .map_err(|_| invalid("the stream ends inside the header CRC"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::{Compression, GzBuilder};
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn inflate(blob: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        // A small buffer, so headers and trailers straddle refills.
        MultiGz::new(io::BufReader::with_capacity(7, blob)).read_to_end(&mut out)?;
        Ok(out)
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn members_with_every_header_field_inflate_to_their_concatenation() {
        let (a, b) = (data(100_000), data(3));
        let mut first = GzBuilder::new()
            .filename("layer.tar")
            .comment("made by a test")
            .extra(vec![1, 2, 3, 4])
            .write(Vec::new(), Compression::default());
        first.write_all(&a).unwrap();
        let mut blob = first.finish().unwrap();
        blob.extend(gz(&b));
        blob.extend(gz(b""));
        assert_eq!(inflate(&blob).unwrap(), [a, b].concat());
        assert_eq!(inflate(&gz(b"")).unwrap(), b"");
    }

    #[test]
    fn what_flate2_reads_this_reads_the_same() {
        let blob = [gz(&data(70_000)), gz(&data(5))].concat();
        let mut theirs = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob[..])
            .read_to_end(&mut theirs)
            .unwrap();
        assert_eq!(inflate(&blob).unwrap(), theirs);
    }

    /// Tape-block padding after the last member (`tar -b`, some registries' mirrors): the
    /// bytes are still part of the blob's digest, only not of any member.
    #[test]
    fn zero_padding_after_the_last_member_is_accepted() {
        let two = [gz(&data(3000)), gz(&data(7))].concat();
        for padding in [1, 511, 10_240, 100_000] {
            let blob = [two.clone(), vec![0; padding]].concat();
            assert_eq!(inflate(&blob).unwrap(), [data(3000), data(7)].concat());
        }
    }

    #[test]
    fn broken_framing_is_an_error_naming_gzip() {
        let good = gz(&data(1000));
        let mut bad_magic = good.clone();
        bad_magic[0] = 0;
        let mut bad_method = good.clone();
        bad_method[2] = 7;
        let mut reserved = good.clone();
        reserved[3] = 0x20;
        let mut bad_isize = good.clone();
        let at = bad_isize.len() - 1;
        bad_isize[at] ^= 1;
        let truncated = good[..good.len() - 3].to_vec();
        let trailing = [good.clone(), b"junk after the last member".to_vec()].concat();
        let junk_in_padding = [good.clone(), vec![0; 100], b"x".to_vec(), vec![0; 10]].concat();
        for (name, blob) in [
            ("empty", Vec::new()),
            ("bad magic", bad_magic),
            ("bad method", bad_method),
            ("reserved flags", reserved),
            ("bad isize", bad_isize),
            ("truncated trailer", truncated),
            ("trailing junk", trailing),
            ("junk in the zero padding", junk_in_padding),
        ] {
            let err = inflate(&blob).expect_err(name);
            assert!(err.to_string().contains("gzip"), "{name}: {err}");
        }
    }

    #[test]
    fn a_wrong_crc_is_not_checked_here_the_diff_id_covers_it() {
        let mut blob = gz(&data(1000));
        let at = blob.len() - 8;
        blob[at] ^= 0xff;
        assert_eq!(inflate(&blob).unwrap(), data(1000));
    }
}
