//! Walking an initrd: concatenated segments, each a plain cpio archive or a
//! compressed stream of cpio archives, with zero padding between them.
//!
//! This follows the kernel's `unpack_to_rootfs()` (init/initramfs.c): zero
//! bytes between segments are skipped; a segment starting with a cpio magic
//! is read as a plain archive; anything else must start with a compression
//! magic, and the decompressed stream must hold whole archives (optionally
//! separated by zeros). A typical Debian initrd is one or two plain
//! microcode archives followed by one compressed main archive.
//!
//! [`InitrdReader`] streams entries: data is decompressed as it is read or
//! skipped, and nothing but the current buffers is held in memory.

use std::io::{self, BufRead, Read};

use crate::compress::{Compression, Decoder, PeekReader};
use crate::cpio::{self, CpioReader, Header};

/// One segment of an initrd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Position in the initrd, from 0.
    pub index: usize,
    /// Offset of its first byte in the file.
    pub offset: u64,
    /// Offset just past its last byte (zero padding after it not counted).
    pub end: u64,
    /// How it is stored.
    pub compression: Compression,
    /// Number of cpio archives (each closed by a trailer) inside.
    pub archives: u32,
    /// Number of entries, trailers not counted.
    pub entries: u64,
    /// Size of the (decompressed) cpio data.
    pub unpacked: u64,
}

/// An entry of the initrd, with where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Index of the segment holding it.
    pub segment: usize,
    /// Index of the cpio archive holding it, counted over the whole initrd.
    /// Hard links only join entries of the same archive, as in the kernel.
    pub archive: u32,
    /// The entry's header and name.
    pub header: Header,
}

/// Error while walking an initrd.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitrdError {
    /// Reading the file failed between segments.
    #[error("reading the initrd at offset {offset}: {source}")]
    Io {
        /// Offset in the file.
        offset: u64,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// Bytes where a segment should start are neither cpio nor a known
    /// compression.
    #[error("offset {offset}: not a cpio archive nor a known compression (starts with {head})")]
    UnknownFormat {
        /// Offset in the file.
        offset: u64,
        /// The first bytes there, in hex.
        head: String,
    },
    /// A recognised compression we cannot decode.
    #[error("segment {segment} at offset {offset}: {compression} compression is not supported")]
    Unsupported {
        /// Segment index.
        segment: usize,
        /// Offset in the file.
        offset: u64,
        /// The compression.
        compression: Compression,
    },
    /// An archive inside a segment is malformed, truncated, or its
    /// decompression failed.
    #[error("segment {segment} ({compression} at offset {offset}): {source}")]
    Cpio {
        /// Segment index.
        segment: usize,
        /// Offset of the segment in the file.
        offset: u64,
        /// The segment's compression.
        compression: Compression,
        /// The failure, with the entry's offset in the (decompressed)
        /// segment and its name.
        #[source]
        source: cpio::ReadError,
    },
    /// A compressed segment holds something other than zero padding or
    /// another archive after a trailer (the kernel: "junk within compressed
    /// archive").
    #[error(
        "segment {segment} ({compression} at offset {offset}): junk after a cpio trailer at \
         unpacked offset {unpacked_offset}"
    )]
    Junk {
        /// Segment index.
        segment: usize,
        /// Offset of the segment in the file.
        offset: u64,
        /// The segment's compression.
        compression: Compression,
        /// Where the junk starts in the decompressed stream.
        unpacked_offset: u64,
    },
}

/// Where the walker is.
enum State<R: Read> {
    /// Between segments, reading the file itself.
    Between(PeekReader<R>),
    /// Inside a plain archive: cpio read straight from the file.
    Plain(CpioReader<PeekReader<R>>),
    /// Inside a compressed segment: cpio read from the decoder.
    Packed(Box<CpioReader<PeekReader<Decoder<R>>>>),
    /// End of file reached.
    Done,
    /// An error happened; nothing more can be read.
    Failed,
}

/// Streaming reader of every entry of every segment of an initrd.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let file = std::fs::File::open("/boot/initrd.img")?;
/// let mut initrd = diskless_initramfs::InitrdReader::new(file);
/// while let Some(entry) = initrd.next_entry()? {
///     println!("{}", entry.header.name_lossy());
/// }
/// for s in initrd.segments() {
///     println!("{} {} {}", s.offset, s.compression, s.entries);
/// }
/// # Ok(()) }
/// ```
pub struct InitrdReader<R: Read> {
    state: State<R>,
    segments: Vec<Segment>,
    archives: u32,
}

/// Reads the magic-sniffing head of the next segment.
const SNIFF_LEN: usize = 6;

impl<R: Read> InitrdReader<R> {
    /// Walks the initrd read from `inner` (buffered internally).
    pub fn new(inner: R) -> Self {
        InitrdReader {
            state: State::Between(PeekReader::new(inner)),
            segments: Vec::new(),
            archives: 0,
        }
    }

    /// Segments seen so far; after [`next_entry`](Self::next_entry) has
    /// returned `Ok(None)`, all of them. The last one's `end` and counts are
    /// final only once it has been left.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    fn current(&mut self) -> &mut Segment {
        self.segments.last_mut().expect("inside a segment")
    }

    fn cpio_error(&self, source: cpio::ReadError) -> InitrdError {
        let s = self.segments.last().expect("inside a segment");
        InitrdError::Cpio {
            segment: s.index,
            offset: s.offset,
            compression: s.compression,
            source,
        }
    }

    /// The next entry, reading past the data of the previous one and
    /// across segment boundaries; `Ok(None)` at the end of the initrd.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, InitrdError> {
        match self.step() {
            Ok(entry) => Ok(entry),
            Err(e) => {
                self.state = State::Failed;
                Err(e)
            }
        }
    }

    fn step(&mut self) -> Result<Option<Entry>, InitrdError> {
        loop {
            match std::mem::replace(&mut self.state, State::Failed) {
                State::Failed => return Ok(None),
                State::Done => {
                    self.state = State::Done;
                    return Ok(None);
                }
                State::Between(src) => self.start_segment(src)?,
                State::Plain(mut cpio) => match cpio.next_entry() {
                    Ok(Some(header)) => {
                        self.state = State::Plain(cpio);
                        return Ok(Some(self.entry(header)));
                    }
                    Ok(None) => {
                        // A plain archive is a segment of its own.
                        self.archives += 1;
                        let src = cpio.into_inner();
                        let seg = self.current();
                        seg.archives += 1;
                        seg.end = src.position();
                        seg.unpacked = seg.end - seg.offset;
                        self.state = State::Between(src);
                    }
                    Err(e) => return Err(self.cpio_error(e)),
                },
                State::Packed(mut cpio) => match cpio.next_entry() {
                    Ok(Some(header)) => {
                        self.state = State::Packed(cpio);
                        return Ok(Some(self.entry(header)));
                    }
                    Ok(None) => {
                        self.archives += 1;
                        self.current().archives += 1;
                        self.after_packed_archive(*cpio)?;
                    }
                    Err(e) => return Err(self.cpio_error(e)),
                },
            }
        }
    }

    fn entry(&mut self, header: Header) -> Entry {
        let archive = self.archives;
        let seg = self.current();
        seg.entries += 1;
        Entry {
            segment: seg.index,
            archive,
            header,
        }
    }

    /// At the start of a segment, or padding, or the end of the file.
    fn start_segment(&mut self, mut src: PeekReader<R>) -> Result<(), InitrdError> {
        let io_err = |offset, source| InitrdError::Io { offset, source };
        // Zero padding between segments: the kernel skips it byte by byte.
        loop {
            let offset = src.position();
            let buf = src.fill_buf().map_err(|e| io_err(offset, e))?;
            if buf.is_empty() {
                self.state = State::Done;
                return Ok(());
            }
            let zeros = buf.iter().take_while(|&&b| b == 0).count();
            let all_zero = zeros == buf.len();
            src.consume(zeros);
            if !all_zero {
                break;
            }
        }
        let offset = src.position();
        let head = src.peek(SNIFF_LEN).map_err(|e| io_err(offset, e))?;
        let Some(compression) = Compression::sniff(head) else {
            let head = head
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ");
            return Err(InitrdError::UnknownFormat { offset, head });
        };
        let index = self.segments.len();
        self.segments.push(Segment {
            index,
            offset,
            end: offset,
            compression,
            archives: 0,
            entries: 0,
            unpacked: 0,
        });
        self.state = match compression {
            Compression::None => State::Plain(CpioReader::with_offset(src, offset)),
            Compression::Lzo => {
                return Err(InitrdError::Unsupported {
                    segment: index,
                    offset,
                    compression,
                })
            }
            _ => {
                let decoder = Decoder::new(src, compression).map_err(|e| io_err(offset, e))?;
                State::Packed(Box::new(CpioReader::new(PeekReader::new(decoder))))
            }
        };
        Ok(())
    }

    /// After a trailer inside a compressed segment: skip zeros, then either
    /// another archive follows or the stream must end.
    fn after_packed_archive(
        &mut self,
        cpio: CpioReader<PeekReader<Decoder<R>>>,
    ) -> Result<(), InitrdError> {
        let mut unpacked = cpio.into_inner();
        let seg = self.segments.last().expect("inside a segment").clone();
        let fail = |e: io::Error, at: u64| InitrdError::Cpio {
            segment: seg.index,
            offset: seg.offset,
            compression: seg.compression,
            source: cpio::ReadError {
                offset: at,
                name: None,
                kind: cpio::ReadErrorKind::Io(e),
            },
        };
        loop {
            let at = unpacked.position();
            let buf = unpacked.fill_buf().map_err(|e| fail(e, at))?;
            if buf.is_empty() {
                // The decoder reached the end of its stream: the file goes on
                // right after it.
                let src = unpacked.into_inner().into_inner();
                let s = self.current();
                s.end = src.position();
                s.unpacked = at;
                self.state = State::Between(src);
                return Ok(());
            }
            let zeros = buf.iter().take_while(|&&b| b == 0).count();
            if zeros == buf.len() {
                unpacked.consume(zeros);
                continue;
            }
            let next = buf[zeros];
            unpacked.consume(zeros);
            let at = unpacked.position();
            if next == b'0' {
                self.state = State::Packed(Box::new(CpioReader::with_offset(unpacked, at)));
                return Ok(());
            }
            return Err(InitrdError::Junk {
                segment: seg.index,
                offset: seg.offset,
                compression: seg.compression,
                unpacked_offset: at,
            });
        }
    }

    /// Reader of the current entry's data (empty when there is no current
    /// entry). Errors are plain `io::Error`s; callers add the entry's name.
    pub fn data(&mut self) -> EntryData<'_, R> {
        EntryData { reader: self }
    }

    /// Reads the rest of the current entry's data into memory (for symlink
    /// targets and other small things).
    pub fn read_data_to_vec(&mut self) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        self.data().read_to_end(&mut v)?;
        Ok(v)
    }
}

/// Data of the current entry of an [`InitrdReader`].
pub struct EntryData<'a, R: Read> {
    reader: &'a mut InitrdReader<R>,
}

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.reader.state {
            State::Plain(c) => c.data().read(buf),
            State::Packed(c) => c.data().read(buf),
            _ => Ok(0),
        }
    }
}

/// Reads a whole initrd, returning its entries (without data) and its
/// segment table. A convenience for tests and small tools.
pub fn list<R: Read>(inner: R) -> Result<(Vec<Entry>, Vec<Segment>), InitrdError> {
    let mut r = InitrdReader::new(inner);
    let mut entries = Vec::new();
    while let Some(e) = r.next_entry()? {
        entries.push(e);
    }
    Ok((entries, r.segments().to_vec()))
}
