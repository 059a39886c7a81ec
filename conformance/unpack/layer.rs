//! Layer tars for the conformance corpus, written record by record: ownership, mode bits,
//! mtimes (PAX fractional and pre-epoch ones), xattrs (PAX `SCHILY.xattr.*`), FIFOs, hard and
//! symbolic links, whiteouts and opaque markers, and long names in the three ways tar writers
//! spell them (PAX `path`/`linkpath`, GNU `L`/`K` records, the ustar prefix field). Nothing is
//! checked or normalised: a corpus writes exactly the stream it means to test.

use tar::{EntryType, Header};

/// A modification time: seconds since the epoch (negative before it) and nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

impl Time {
    pub const fn at(secs: i64) -> Time {
        Time { secs, nanos: 0 }
    }

    /// The PAX `mtime` value: `[-]seconds[.fraction]` (a negative value with a fraction is
    /// below `secs`: -86400 s + 0.25 s is written `-86399.75`).
    fn pax(self) -> String {
        match (self.secs < 0, self.nanos) {
            (_, 0) => self.secs.to_string(),
            (false, n) => format!("{}.{n:09}", self.secs),
            (true, n) => format!("-{}.{:09}", -(self.secs + 1), 1_000_000_000 - n),
        }
    }
}

/// Ownership, mode, mtime and xattrs of an entry.
#[derive(Clone, Debug)]
pub struct Meta {
    pub uid: u64,
    pub gid: u64,
    pub mode: u32,
    pub mtime: Time,
    pub xattrs: Vec<(&'static str, Vec<u8>)>,
}

/// Root-owned, the given mode, a fixed mtime.
pub fn meta(mode: u32) -> Meta {
    Meta {
        uid: 0,
        gid: 0,
        mode,
        mtime: Time::at(1_600_000_000),
        xattrs: Vec::new(),
    }
}

impl Meta {
    pub fn owner(mut self, uid: u64, gid: u64) -> Meta {
        (self.uid, self.gid) = (uid, gid);
        self
    }
    pub fn mtime(mut self, secs: i64, nanos: u32) -> Meta {
        self.mtime = Time { secs, nanos };
        self
    }
    pub fn xattr(mut self, name: &'static str, value: &[u8]) -> Meta {
        self.xattrs.push((name, value.to_vec()));
        self
    }
}

/// How names longer than a ustar header holds are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LongNames {
    /// PAX `path` / `linkpath` records (ustar headers).
    Pax,
    /// GNU `././@LongLink` records of type `L` / `K` (GNU headers).
    Gnu,
    /// Names up to 255 bytes split over the ustar `prefix` and `name` fields; longer names and
    /// link targets as PAX records.
    UstarPrefix,
}

/// A layer's tar stream under construction.
pub struct LayerTar {
    builder: tar::Builder<Vec<u8>>,
    long: LongNames,
}

impl LayerTar {
    pub fn new(long: LongNames) -> LayerTar {
        LayerTar {
            builder: tar::Builder::new(Vec::new()),
            long,
        }
    }

    pub fn file(&mut self, path: &str, meta: &Meta, data: &[u8]) -> &mut Self {
        self.entry(path, EntryType::Regular, meta, "", data)
    }

    /// `path` without the trailing slash; it is added.
    pub fn dir(&mut self, path: &str, meta: &Meta) -> &mut Self {
        let name = format!("{}/", path.trim_end_matches('/'));
        self.entry(&name, EntryType::Directory, meta, "", &[])
    }

    pub fn symlink(&mut self, path: &str, target: &str, meta: &Meta) -> &mut Self {
        self.entry(path, EntryType::Symlink, meta, target, &[])
    }

    /// A hard link to `target` (a path in the image, as tar writers spell it).
    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(path, EntryType::Link, &meta(0o644), target, &[])
    }

    pub fn fifo(&mut self, path: &str, meta: &Meta) -> &mut Self {
        self.entry(path, EntryType::Fifo, meta, "", &[])
    }

    /// `dir/.wh.name` for `path` = `dir/name`.
    pub fn whiteout(&mut self, path: &str) -> &mut Self {
        let name = match path.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{path}"),
        };
        self.entry(&name, EntryType::Regular, &meta(0o600), "", &[])
    }

    /// `dir/.wh..wh..opq`.
    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        let name = format!("{}/.wh..wh..opq", dir.trim_end_matches('/'));
        self.entry(&name, EntryType::Regular, &meta(0o600), "", &[])
    }

    pub fn finish(self) -> Vec<u8> {
        self.builder.into_inner().expect("finish layer tar")
    }

    fn header(&self) -> Header {
        match self.long {
            LongNames::Gnu => Header::new_gnu(),
            LongNames::Pax | LongNames::UstarPrefix => Header::new_ustar(),
        }
    }

    fn entry(
        &mut self,
        path: &str,
        kind: EntryType,
        meta: &Meta,
        link: &str,
        data: &[u8],
    ) -> &mut Self {
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if meta.mtime.secs < 0 || meta.mtime.nanos != 0 {
            pax.push(("mtime".into(), meta.mtime.pax().into_bytes()));
        }
        for (name, value) in &meta.xattrs {
            pax.push((format!("SCHILY.xattr.{name}"), value.clone()));
        }
        let mut header = self.header();
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_uid(meta.uid);
        header.set_gid(meta.gid);
        header.set_mode(meta.mode);
        header.set_mtime(meta.mtime.secs.max(0) as u64);

        let ustar_split = self.long == LongNames::UstarPrefix && header.set_path(path).is_ok();
        if !ustar_split {
            if let Some(ustar) = header.as_ustar_mut() {
                ustar.prefix.fill(0);
            }
            set_raw(&mut header.as_old_mut().name, path);
            if path.len() > 100 {
                match self.long {
                    LongNames::Gnu => self.gnu_long(b'L', path),
                    LongNames::Pax | LongNames::UstarPrefix => {
                        pax.push(("path".into(), path.as_bytes().to_vec()))
                    }
                }
            }
        }
        set_raw(&mut header.as_old_mut().linkname, link);
        if link.len() > 100 {
            match self.long {
                LongNames::Gnu => self.gnu_long(b'K', link),
                LongNames::Pax | LongNames::UstarPrefix => {
                    pax.push(("linkpath".into(), link.as_bytes().to_vec()))
                }
            }
        }
        if !pax.is_empty() {
            self.pax(path, &pax);
        }
        header.set_cksum();
        self.builder.append(&header, data).expect("append entry");
        self
    }

    /// A GNU long name (`L`) or long link name (`K`) record for the next entry.
    fn gnu_long(&mut self, kind: u8, name: &str) {
        let mut header = Header::new_gnu();
        set_raw(&mut header.as_old_mut().name, "././@LongLink");
        header.set_entry_type(EntryType::new(kind));
        header.set_mode(0o644);
        header.set_size(name.len() as u64 + 1);
        header.set_cksum();
        let mut data = name.as_bytes().to_vec();
        data.push(0);
        self.builder
            .append(&header, data.as_slice())
            .expect("append GNU long name");
    }

    /// A PAX extended header (`x`) with `records` for the next entry.
    fn pax(&mut self, path: &str, records: &[(String, Vec<u8>)]) {
        let mut data = Vec::new();
        for (key, value) in records {
            // "<len> <key>=<value>\n", where len counts itself.
            let body = key.len() + value.len() + 3;
            let mut len = body + body.to_string().len();
            if len.to_string().len() != body.to_string().len() {
                len += 1;
            }
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        let mut header = Header::new_ustar();
        let name = format!(
            "PaxHeaders/{}",
            path.rsplit('/').find(|p| !p.is_empty()).unwrap_or("root")
        );
        set_raw(&mut header.as_old_mut().name, &name);
        header.set_entry_type(EntryType::XHeader);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_cksum();
        self.builder
            .append(&header, data.as_slice())
            .expect("append PAX header");
    }
}

/// Copies `value` into a fixed header field, cut to fit (the long form is written elsewhere).
fn set_raw(field: &mut [u8], value: &str) {
    field.fill(0);
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value.as_bytes()[..n]);
}
