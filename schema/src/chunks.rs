//! The tar streams of file transfers (`bkg cp`, `bkg exe -o`, the files API) as chunks on a
//! bounded channel: tar reads and writes them on a blocking thread while async code receives or
//! sends them, so neither side holds more than a few chunks of a stream in memory.

use std::io::{Read, Write};

use tokio::sync::mpsc;

/// The most bytes one chunk holds.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// How many chunks wait for a slow reader.
pub const CHUNKS_IN_FLIGHT: usize = 4;

/// A piece of a stream, or why the stream broke.
pub type Chunk = std::io::Result<Vec<u8>>;

/// A channel of chunks as long as [`CHUNKS_IN_FLIGHT`].
pub fn channel() -> (mpsc::Sender<Chunk>, mpsc::Receiver<Chunk>) {
    mpsc::channel(CHUNKS_IN_FLIGHT)
}

/// Why [`copy_leaving_holes`] stopped.
#[derive(Debug)]
pub enum CopyFailure {
    /// Reading the entry failed.
    Read(std::io::Error),
    /// Writing the file failed.
    Write(std::io::Error),
    /// The entry ended before its `size`: a tar reader ends an entry quietly where its stream
    /// broke off.
    Short,
}

/// Copies a file entry of a transfer, `size` bytes from `from`, into `to`, leaving its runs of
/// zeros (a `buffer` of them) as holes, as `cp --sparse=auto` does: a sparse file stays sparse,
/// taking of a disk only what it holds. The agent's uploads and the CLI's downloads both write
/// through it.
pub fn copy_leaving_holes(
    from: &mut impl Read,
    to: &mut std::fs::File,
    size: u64,
    buffer: &mut [u8],
) -> Result<(), CopyFailure> {
    use std::io::Seek;
    let mut copied = 0u64;
    loop {
        let read = from.read(buffer).map_err(CopyFailure::Read)?;
        if read == 0 {
            break;
        }
        let block = &buffer[..read];
        let written = match block.iter().all(|byte| *byte == 0) {
            true => to.seek(std::io::SeekFrom::Current(i64::try_from(read).unwrap_or(i64::MAX))).map(drop),
            false => to.write_all(block),
        };
        written.map_err(CopyFailure::Write)?;
        copied += read as u64;
    }
    if copied != size {
        return Err(CopyFailure::Short);
    }
    // A file that ends in zeros ends in a hole, which only its length gives.
    to.set_len(copied).map_err(CopyFailure::Write)
}

/// Reads the chunks as they come, on a blocking thread; a chunk that is an error fails the read.
pub struct ChunkReader {
    chunks: mpsc::Receiver<Chunk>,
    current: Vec<u8>,
    offset: usize,
}

impl ChunkReader {
    pub fn new(chunks: mpsc::Receiver<Chunk>) -> Self {
        Self { chunks, current: Vec::new(), offset: 0 }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        while self.offset == self.current.len() {
            match self.chunks.blocking_recv() {
                Some(chunk) => {
                    self.current = chunk?;
                    self.offset = 0;
                }
                None => return Ok(0),
            }
        }
        let taken = buffer.len().min(self.current.len() - self.offset);
        buffer[..taken].copy_from_slice(&self.current[self.offset..self.offset + taken]);
        self.offset += taken;
        Ok(taken)
    }
}

/// Sends what is written as chunks of [`CHUNK_BYTES`], from a blocking thread; `flush` sends
/// what is left. Writing fails once the reader has gone, with `hung_up` as the reason.
pub struct ChunkWriter {
    sender: mpsc::Sender<Chunk>,
    pending: Vec<u8>,
    hung_up: &'static str,
}

impl ChunkWriter {
    pub fn new(sender: mpsc::Sender<Chunk>, hung_up: &'static str) -> Self {
        Self { sender, pending: Vec::with_capacity(CHUNK_BYTES), hung_up }
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let taken = bytes.len().min(CHUNK_BYTES - self.pending.len());
        self.pending.extend_from_slice(&bytes[..taken]);
        if self.pending.len() == CHUNK_BYTES {
            self.flush()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.pending, Vec::with_capacity(CHUNK_BYTES));
        self.sender
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, self.hung_up))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_is_read_back_whole_in_chunks_of_the_set_size() {
        let (sender, chunks) = channel();
        let data: Vec<u8> = (0..CHUNK_BYTES * 2 + 1000).map(|index| (index % 251) as u8).collect();
        let expected = data.clone();
        let writing = std::thread::spawn(move || {
            let mut writer = ChunkWriter::new(sender, "the reader hung up");
            writer.write_all(&data).and_then(|()| writer.flush())
        });
        let mut read = Vec::new();
        ChunkReader::new(chunks).read_to_end(&mut read).expect("read");
        assert!(writing.join().is_ok_and(|written| written.is_ok()));
        assert_eq!(read, expected);
    }

    #[test]
    fn an_error_chunk_fails_the_read_and_a_gone_reader_fails_the_write() {
        let (sender, chunks) = channel();
        sender.blocking_send(Ok(b"start".to_vec())).expect("send");
        sender.blocking_send(Err(std::io::Error::other("the body broke"))).expect("send");
        drop(sender);
        let mut read = Vec::new();
        let failed = ChunkReader::new(chunks).read_to_end(&mut read);
        assert_eq!(failed.map_err(|error| error.to_string()), Err("the body broke".to_owned()));

        let (sender, chunks) = channel();
        drop(chunks);
        let mut writer = ChunkWriter::new(sender, "the reader hung up");
        let written = writer.write_all(b"x").and_then(|()| writer.flush());
        assert_eq!(written.map_err(|error| error.to_string()), Err("the reader hung up".to_owned()));
    }
}
