//! Recognising and decoding the compressions an initrd segment can use.
//!
//! The kernel picks a decompressor from the first bytes of each segment
//! (`decompress_method()` in the kernel's `lib/decompress.c`), and each
//! decompressor reports how much input it used, so the next segment starts
//! right after. [`Decoder`] does the same: it reads from a [`PeekReader`] and
//! consumes exactly the bytes of one compressed stream, so that
//! [`Decoder::into_inner`] gives the source back positioned at whatever
//! follows.

use std::fmt;
use std::io::{self, BufRead, Read};

/// A buffered reader that can look ahead any number of bytes without
/// consuming them, and counts what it has consumed.
pub struct PeekReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    pos: usize,
    /// End of the valid bytes in `buf`.
    end: usize,
    /// Bytes consumed since creation (the stream offset of `buf[pos]`).
    consumed: u64,
}

impl<R: Read> PeekReader<R> {
    /// Default buffer size: large enough that decoders rarely wait on it.
    pub const DEFAULT_CAPACITY: usize = 128 * 1024;

    /// Wraps `inner` with the default buffer size.
    pub fn new(inner: R) -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY, inner)
    }

    /// Wraps `inner` with a buffer of `capacity` bytes (at least 16).
    pub fn with_capacity(capacity: usize, inner: R) -> Self {
        PeekReader {
            inner,
            buf: vec![0; capacity.max(16)],
            pos: 0,
            end: 0,
            consumed: 0,
        }
    }

    /// Returns the next `n` bytes without consuming them, or fewer if the
    /// stream ends first.
    pub fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.end - self.pos < n {
            if self.buf.len() - self.pos < n {
                // Not enough room after pos: move the unread bytes to the front
                // (and grow, for a peek longer than the buffer).
                self.buf.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
                if self.buf.len() < n {
                    self.buf.resize(n, 0);
                }
            }
            while self.end - self.pos < n {
                let got = match self.inner.read(&mut self.buf[self.end..]) {
                    Ok(got) => got,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                if got == 0 {
                    break;
                }
                self.end += got;
            }
        }
        let avail = (self.end - self.pos).min(n);
        Ok(&self.buf[self.pos..self.pos + avail])
    }

    /// Bytes consumed so far: the offset of the next byte in the stream.
    pub fn position(&self) -> u64 {
        self.consumed
    }

    /// Gives back the inner reader; buffered bytes are lost.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for PeekReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        // Large reads with nothing buffered skip the copy.
        if self.pos == self.end && out.len() >= self.buf.len() {
            let n = self.inner.read(out)?;
            self.consumed += n as u64;
            return Ok(n);
        }
        let avail = self.fill_buf()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for PeekReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
            loop {
                match self.inner.read(&mut self.buf) {
                    Ok(n) => {
                        self.end = n;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(&self.buf[self.pos..self.end])
    }

    fn consume(&mut self, amt: usize) {
        let amt = amt.min(self.end - self.pos);
        self.pos += amt;
        self.consumed += amt as u64;
    }
}

/// How a segment is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Plain cpio.
    None,
    /// gzip (`1f 8b`, or `1f 9e` from old gzip).
    Gzip,
    /// xz (`fd 37 7a 58 5a 00`).
    Xz,
    /// zstd (`28 b5 2f fd`).
    Zstd,
    /// lz4 legacy frame (`02 21 4c 18`), what `lz4 -l` and the kernel use.
    Lz4Legacy,
    /// lzma "alone" format (`5d 00`).
    Lzma,
    /// bzip2 (`BZh`).
    Bzip2,
    /// lzop (`89 4c 5a 4f`): recognised, not decoded.
    Lzo,
}

impl Compression {
    /// Identifies the compression from the first bytes of a segment (at
    /// least 6 should be given when available). `None` means no known
    /// magic: neither a cpio header nor a compressed stream.
    pub fn sniff(head: &[u8]) -> Option<Compression> {
        // Same table (and order) as the kernel's decompress_method().
        let c = if head.starts_with(b"070701") || head.starts_with(b"070702") {
            Compression::None
        } else if head.starts_with(&[0x1f, 0x8b]) || head.starts_with(&[0x1f, 0x9e]) {
            Compression::Gzip
        } else if head.starts_with(b"BZh") {
            Compression::Bzip2
        } else if head.starts_with(&[0x5d, 0x00]) {
            Compression::Lzma
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Compression::Xz
        } else if head.starts_with(&[0x89, b'L', b'Z', b'O']) {
            Compression::Lzo
        } else if head.starts_with(&LZ4_LEGACY_MAGIC) {
            Compression::Lz4Legacy
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            return None;
        };
        Some(c)
    }

    /// Short lowercase name, as mkinitramfs' `-c` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Lz4Legacy => "lz4",
            Compression::Lzma => "lzma",
            Compression::Bzip2 => "bzip2",
            Compression::Lzo => "lzo",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
/// Every legacy-frame block but the last decompresses to this size.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// `LZ4_compressBound()`: the largest a block of `n` input bytes can get.
const fn lz4_compress_bound(n: usize) -> usize {
    n + n / 255 + 16
}

/// Decoder of the lz4 legacy frame: the magic, then blocks each preceded by
/// their compressed length (little-endian u32). The format has no end mark;
/// like the kernel's `unlz4` and the lz4 tool, we stop at end of input, at a
/// length of zero (padding before the next segment) or at a length no block
/// can have (the magic of something else). A repeated magic starts a new
/// frame within the same stream.
struct Lz4Legacy<R> {
    src: PeekReader<R>,
    block: Vec<u8>,
    compressed: Vec<u8>,
    pos: usize,
    started: bool,
    done: bool,
}

impl<R: Read> Lz4Legacy<R> {
    fn new(src: PeekReader<R>) -> Self {
        Lz4Legacy {
            src,
            block: Vec::new(),
            compressed: Vec::new(),
            pos: 0,
            started: false,
            done: false,
        }
    }

    /// Decodes the next block into `self.block`; false at end of stream.
    fn next_block(&mut self) -> io::Result<bool> {
        if !self.started {
            // The magic was sniffed already; consume it.
            self.src.consume(LZ4_LEGACY_MAGIC.len());
            self.started = true;
        }
        loop {
            let head = self.src.peek(4)?;
            if head.len() < 4 {
                // End of input (a stray 1-3 bytes are left for the caller).
                return Ok(false);
            }
            if head == LZ4_LEGACY_MAGIC {
                self.src.consume(4);
                continue;
            }
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            if len == 0 || len > lz4_compress_bound(LZ4_LEGACY_BLOCK) {
                return Ok(false);
            }
            self.src.consume(4);
            self.compressed.resize(len, 0);
            self.src.read_exact(&mut self.compressed).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "lz4 block truncated")
                } else {
                    e
                }
            })?;
            self.block.resize(LZ4_LEGACY_BLOCK, 0);
            let n = lz4_flex::block::decompress_into(&self.compressed, &mut self.block)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("lz4: {e}")))?;
            self.block.truncate(n);
            self.pos = 0;
            return Ok(true);
        }
    }
}

impl<R: Read> Read for Lz4Legacy<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.block.len() {
            if self.done || out.is_empty() {
                return Ok(0);
            }
            if !self.next_block()? {
                self.done = true;
                return Ok(0);
            }
        }
        let n = (self.block.len() - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

enum Inner<R: Read> {
    Gzip(flate2::bufread::GzDecoder<PeekReader<R>>),
    Xz(liblzma::bufread::XzDecoder<PeekReader<R>>),
    Zstd(zstd::stream::read::Decoder<'static, PeekReader<R>>),
    Lz4(Lz4Legacy<R>),
    Bzip2(bzip2::bufread::BzDecoder<PeekReader<R>>),
}

/// Decompresses one compressed stream read from a [`PeekReader`], consuming
/// exactly its bytes.
pub struct Decoder<R: Read> {
    inner: Inner<R>,
    compression: Compression,
}

impl<R: Read> Decoder<R> {
    /// Starts decoding `src`, which must begin with a stream of
    /// `compression` (as returned by [`Compression::sniff`]). Fails for
    /// [`Compression::None`] and [`Compression::Lzo`].
    pub fn new(src: PeekReader<R>, compression: Compression) -> io::Result<Self> {
        let inner = match compression {
            Compression::Gzip => Inner::Gzip(flate2::bufread::GzDecoder::new(src)),
            Compression::Xz => Inner::Xz(liblzma::bufread::XzDecoder::new(src)),
            Compression::Lzma => {
                let stream = liblzma::stream::Stream::new_lzma_decoder(u64::MAX)
                    .map_err(|e| io::Error::other(format!("lzma decoder: {e}")))?;
                Inner::Xz(liblzma::bufread::XzDecoder::new_stream(src, stream))
            }
            // One frame per stream: the kernel's unzstd, too, returns after a
            // frame, and the next frame is then another segment.
            Compression::Zstd => {
                Inner::Zstd(zstd::stream::read::Decoder::with_buffer(src)?.single_frame())
            }
            Compression::Lz4Legacy => Inner::Lz4(Lz4Legacy::new(src)),
            Compression::Bzip2 => Inner::Bzip2(bzip2::bufread::BzDecoder::new(src)),
            Compression::None | Compression::Lzo => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("no decoder for {compression} segments"),
                ))
            }
        };
        Ok(Decoder { inner, compression })
    }

    /// The compression being decoded.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The source, positioned after the compressed stream once this decoder
    /// has returned end of file.
    pub fn get_ref(&self) -> &PeekReader<R> {
        match &self.inner {
            Inner::Gzip(d) => d.get_ref(),
            Inner::Xz(d) => d.get_ref(),
            Inner::Zstd(d) => d.get_ref(),
            Inner::Lz4(d) => &d.src,
            Inner::Bzip2(d) => d.get_ref(),
        }
    }

    /// Gives back the source, positioned after the compressed stream once
    /// this decoder has returned end of file.
    pub fn into_inner(self) -> PeekReader<R> {
        match self.inner {
            Inner::Gzip(d) => d.into_inner(),
            Inner::Xz(d) => d.into_inner(),
            Inner::Zstd(d) => d.finish(),
            Inner::Lz4(d) => d.src,
            Inner::Bzip2(d) => d.into_inner(),
        }
    }
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Gzip(d) => d.read(buf),
            Inner::Xz(d) => d.read(buf),
            Inner::Zstd(d) => d.read(buf),
            Inner::Lz4(d) => d.read(buf),
            Inner::Bzip2(d) => d.read(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const TAIL: &[u8] = b"\x00\x00\x00\x00070701rest";

    fn payload() -> Vec<u8> {
        (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
        match c {
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Xz => liblzma::encode_all(data, 1).unwrap(),
            Compression::Lzma => {
                let opts = liblzma::stream::LzmaOptions::new_preset(1).unwrap();
                let stream = liblzma::stream::Stream::new_lzma_encoder(&opts).unwrap();
                let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(data, 1).unwrap(),
            Compression::Bzip2 => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Lz4Legacy => {
                // Legacy frame by hand: magic, then length-prefixed blocks.
                let mut out = LZ4_LEGACY_MAGIC.to_vec();
                for chunk in data.chunks(LZ4_LEGACY_BLOCK) {
                    let block = lz4_flex::block::compress(chunk);
                    out.extend_from_slice(&(block.len() as u32).to_le_bytes());
                    out.extend_from_slice(&block);
                }
                out
            }
            Compression::None | Compression::Lzo => unreachable!(),
        }
    }

    /// Every compression that has a decoder.
    const STREAMS: [Compression; 6] = [
        Compression::Gzip,
        Compression::Xz,
        Compression::Lzma,
        Compression::Zstd,
        Compression::Bzip2,
        Compression::Lz4Legacy,
    ];

    /// Each decoder returns the payload and leaves the source exactly at
    /// the bytes after its stream.
    #[test]
    fn decoders_stop_exactly_at_stream_end() {
        let data = payload();
        for c in STREAMS {
            let mut input = compress(c, &data);
            let stream_len = input.len() as u64;
            input.extend_from_slice(TAIL);
            // A small buffer makes the decoders refill many times.
            let mut src = PeekReader::with_capacity(64, &input[..]);
            assert_eq!(Compression::sniff(src.peek(6).unwrap()), Some(c));
            let mut d = Decoder::new(src, c).unwrap();
            let mut out = Vec::new();
            d.read_to_end(&mut out).unwrap();
            assert!(out == data, "{c}: payload differs");
            let mut src = d.into_inner();
            assert_eq!(src.position(), stream_len, "{c}");
            let mut rest = Vec::new();
            src.read_to_end(&mut rest).unwrap();
            assert_eq!(rest, TAIL, "{c}");
        }
    }

    #[test]
    fn truncated_streams_are_errors() {
        let data = payload();
        for c in STREAMS {
            let input = compress(c, &data);
            let cut = &input[..input.len() - 7];
            let mut d = Decoder::new(PeekReader::new(cut), c).unwrap();
            let mut out = Vec::new();
            assert!(
                d.read_to_end(&mut out).is_err(),
                "{c}: truncation not noticed"
            );
        }
    }

    #[test]
    fn lz4_legacy_stops_at_zero_padding_and_continues_over_magic() {
        let mut input = compress(Compression::Lz4Legacy, b"first ");
        // A second legacy frame glued on is the same stream, as in the kernel.
        input.extend_from_slice(&compress(Compression::Lz4Legacy, b"second"));
        let stream_len = input.len() as u64;
        input.extend_from_slice(&[0; 8]);
        let mut d = Decoder::new(PeekReader::new(&input[..]), Compression::Lz4Legacy).unwrap();
        let mut out = Vec::new();
        d.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"first second");
        assert_eq!(d.into_inner().position(), stream_len);
    }

    #[test]
    fn sniffing() {
        assert_eq!(Compression::sniff(b"070701000"), Some(Compression::None));
        assert_eq!(Compression::sniff(b"BZh91AY"), Some(Compression::Bzip2));
        assert_eq!(
            Compression::sniff(&[0x89, b'L', b'Z', b'O', 0, 0]),
            Some(Compression::Lzo)
        );
        assert_eq!(Compression::sniff(b"\x7fELF\x02\x01"), None);
        assert_eq!(Compression::sniff(b""), None);
        assert!(Decoder::new(PeekReader::new(&b"\x89LZO"[..]), Compression::Lzo).is_err());
    }

    #[test]
    fn peek_beyond_buffer_grows_and_keeps_order() {
        let data: Vec<u8> = (0..=255).collect();
        let mut r = PeekReader::with_capacity(16, &data[..]);
        assert_eq!(r.peek(3).unwrap(), &[0, 1, 2]);
        r.consume(2);
        assert_eq!(r.peek(40).unwrap(), &data[2..42]);
        let mut out = [0u8; 5];
        r.read_exact(&mut out).unwrap();
        assert_eq!(out, [2, 3, 4, 5, 6]);
        assert_eq!(r.position(), 7);
        assert_eq!(r.peek(1000).unwrap().len(), 249);
    }
}
