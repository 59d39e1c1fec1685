//! Reading a SQLite write-ahead log (`x-wal`) as SQLite's own recovery does: the
//! header (page size, salts, its checksum), then frames whose salts match the
//! header's and whose cumulative checksum continues the chain, up to the last
//! *commit* frame (a frame with a non-zero database size). Frames after the last
//! commit frame (a transaction being written, or one rolled back) are ignored; the
//! first frame that does not continue the chain ends the log (a torn frame, or one
//! left from an earlier generation of the log).
//!
//! Only the `-wal` is read here, with a plain descriptor: SQLite's unix VFS takes no
//! lock on it (its locks are on the database and on `-shm`, which is never opened),
//! so closing this descriptor cannot drop a lock of a connection (see `sqlite`).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// The size of the log's header.
pub const HEADER_BYTES: u64 = 32;
/// The size of a frame's header (before its page).
pub const FRAME_HEADER_BYTES: u64 = 24;

const MAGIC_LITTLE: u32 = 0x377f_0682;
const MAGIC_BIG: u32 = 0x377f_0683;
const VERSION: u32 = 3_007_000;

/// A log's header: what every valid frame of this generation of the log repeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Checksums read the page as big-endian words (else little-endian).
    pub big_endian: bool,
    pub page_size: u32,
    /// Changed at every restart of the log (the first random, the second random or
    /// incremented): frames of another generation carry other salts.
    pub salts: [u32; 2],
    /// The checksum of the header, where the frames' chain starts.
    pub checksum: [u32; 2],
}

/// Where a chain of frames stands after a commit frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Frames read so far (1-based number of the last commit frame; 0: none).
    pub frame: u32,
    /// The cumulative checksum after that frame (the header's at frame 0).
    pub checksum: [u32; 2],
}

/// The committed frames read after a position: the newest version of each page.
#[derive(Debug, Default)]
pub struct Committed {
    /// Where the last commit frame read left the chain.
    pub end: Option<Position>,
    /// The database's size in pages after that commit.
    pub db_pages: u32,
    /// Page number (1-based) → its bytes at that commit (pages from frames after the
    /// start position only).
    pub pages: BTreeMap<u32, Vec<u8>>,
    /// Bytes read from the log.
    pub bytes_read: u64,
    /// The read stopped at the end of the file (or in a frame cut short by it), not at
    /// a frame present on disk that breaks the chain. Such a log may have been
    /// truncated after its last frame read (`journal_size_limit`, a `TRUNCATE`
    /// checkpoint), so its end is not known to be the end of its generation.
    pub ran_out: bool,
}

/// Why the log cannot be read on from a position.
#[derive(Debug, PartialEq, Eq)]
pub enum Break {
    /// No log, a short or invalid header.
    NoLog,
    /// The frame at the position is not the one recorded there (a restarted,
    /// truncated or rewritten log).
    NotContinued,
    /// The committed pages after the position would take more than the bound.
    TooLarge,
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(word)
}

/// SQLite's WAL checksum (`walChecksumBytes`) of `bytes` (a multiple of 8), chained
/// from `start`.
pub fn checksum(big_endian: bool, bytes: &[u8], start: [u32; 2]) -> [u32; 2] {
    let [mut s1, mut s2] = start;
    for pair in bytes.chunks_exact(8) {
        let (x0, x1) = if big_endian {
            (be32(pair, 0), be32(pair, 4))
        } else {
            (
                u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]),
                u32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]),
            )
        };
        s1 = s1.wrapping_add(x0).wrapping_add(s2);
        s2 = s2.wrapping_add(x1).wrapping_add(s1);
    }
    [s1, s2]
}

/// The log's header, if `wal` starts with a valid one.
pub fn read_header(wal: &File) -> std::io::Result<Option<Header>> {
    let mut bytes = [0u8; HEADER_BYTES as usize];
    match wal.read_exact_at(&mut bytes, 0) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let magic = be32(&bytes, 0);
    if (magic != MAGIC_LITTLE && magic != MAGIC_BIG) || be32(&bytes, 4) != VERSION {
        return Ok(None);
    }
    let big_endian = magic == MAGIC_BIG;
    let page_size = be32(&bytes, 8);
    if !(512..=65_536).contains(&page_size) || !page_size.is_power_of_two() {
        return Ok(None);
    }
    let stored = [be32(&bytes, 24), be32(&bytes, 28)];
    if checksum(big_endian, &bytes[..24], [0, 0]) != stored {
        return Ok(None);
    }
    Ok(Some(Header {
        big_endian,
        page_size,
        salts: [be32(&bytes, 16), be32(&bytes, 20)],
        checksum: stored,
    }))
}

/// Whether `new` is the header of the generation of the log right after `old`'s: a
/// writer that restarts the log adds one to the first salt (SQLite's `walRestartHdr`;
/// a log created anew draws both at random), and keeps the page size and byte order.
pub fn restarted_once(old: &Header, new: &Header) -> bool {
    new.salts[0] == old.salts[0].wrapping_add(1)
        && new.page_size == old.page_size
        && new.big_endian == old.big_endian
}

/// Where frame `frame` (1-based) starts.
fn frame_offset(header: &Header, frame: u32) -> u64 {
    HEADER_BYTES + u64::from(frame - 1) * (FRAME_HEADER_BYTES + u64::from(header.page_size))
}

/// Whether the frame at `at` still is the one the chain recorded there: its salts are
/// the header's and its checksum is `at.checksum` (position 0: the header's own).
pub fn continues(wal: &File, header: &Header, at: Position) -> std::io::Result<bool> {
    if at.frame == 0 {
        return Ok(at.checksum == header.checksum);
    }
    let mut bytes = [0u8; FRAME_HEADER_BYTES as usize];
    match wal.read_exact_at(&mut bytes, frame_offset(header, at.frame)) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(error) => return Err(error),
    }
    Ok([be32(&bytes, 8), be32(&bytes, 12)] == header.salts
        && [be32(&bytes, 16), be32(&bytes, 20)] == at.checksum
        && be32(&bytes, 4) != 0)
}

/// Read the frames after `from` (which `continues` has checked) up to the last commit
/// frame whose chain holds, keeping the newest version of each page; `Break::TooLarge`
/// when those pages would exceed `max_bytes`.
pub fn read_committed(
    wal: &File,
    header: &Header,
    from: Position,
    max_bytes: u64,
) -> std::io::Result<Result<Committed, Break>> {
    let page_size = header.page_size as usize;
    let mut committed = Committed::default();
    // Frames of the transaction being read, not yet committed.
    let mut pending: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut chain = from.checksum;
    let mut frame = from.frame;
    let mut bytes = vec![0u8; FRAME_HEADER_BYTES as usize + page_size];
    while let Some(next) = frame.checked_add(1) {
        match wal.read_exact_at(&mut bytes, frame_offset(header, next)) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                committed.ran_out = true;
                break;
            }
            Err(error) => return Err(error),
        }
        committed.bytes_read += bytes.len() as u64;
        let page = be32(&bytes, 0);
        let db_pages = be32(&bytes, 4);
        if page == 0 || [be32(&bytes, 8), be32(&bytes, 12)] != header.salts {
            break;
        }
        let sum = checksum(header.big_endian, &bytes[..8], chain);
        let sum = checksum(
            header.big_endian,
            &bytes[FRAME_HEADER_BYTES as usize..],
            sum,
        );
        if sum != [be32(&bytes, 16), be32(&bytes, 20)] {
            break;
        }
        chain = sum;
        frame = next;
        pending.push((page, bytes[FRAME_HEADER_BYTES as usize..].to_vec()));
        if db_pages != 0 {
            for (page, data) in pending.drain(..) {
                committed.pages.insert(page, data);
            }
            if committed.pages.len() as u64 * page_size as u64 > max_bytes {
                return Ok(Err(Break::TooLarge));
            }
            committed.db_pages = db_pages;
            committed.end = Some(Position {
                frame,
                checksum: chain,
            });
        } else if pending.len() as u64 * page_size as u64 > max_bytes {
            return Ok(Err(Break::TooLarge));
        }
    }
    Ok(Ok(committed))
}

/// How the frames after a version were found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Across {
    /// In the same generation of the log, after the version's position.
    Frames,
    /// The rest of the version's generation, then all of the one after it.
    Restart,
}

/// The pages committed after a position, in the log as it is now.
#[derive(Debug)]
pub struct Since {
    /// The log's header now, and where the next read starts.
    pub header: Header,
    pub at: Position,
    /// The database's size in pages after the last commit read; `None`: no commit.
    pub db_pages: Option<u32>,
    /// Page number → its newest committed bytes.
    pub pages: BTreeMap<u32, Vec<u8>>,
    pub bytes_read: u64,
    pub across: Across,
    /// Across a restart: the pages whose newest version read is the old
    /// generation's (the new one did not write them). The caller checks them against
    /// the database file, which a restart leaves at the old generation's last commit
    /// (see `since`).
    pub from_old: Vec<u32>,
}

/// The pages committed in `log` after position `at` of the generation `old` — within
/// that generation, or across one restart of the log — up to the last commit frame;
/// `None` when the log no longer holds all of them (read the database whole then) or
/// they would take more than `max_bytes`.
///
/// Across a restart, the rest of the old generation is still on disk as long as the
/// new one has not reached the position: a writer fills a generation from its first
/// frame up, so it rewrites the frame at the position before any after it. Those
/// frames are all that was committed in the old generation when a frame present on
/// disk that breaks their chain follows them (a frame of an older generation, or of
/// a transaction never committed). When the file ends there instead, it may have been
/// truncated (`journal_size_limit`), and the end of the old generation is not known.
/// A restart needs a checkpoint of the whole log first, so the new generation's
/// frames lay over the old generation's last commit. Each check is made again after
/// the frames are read: the frame at the position still the old one (so none after
/// it was rewritten meanwhile) and the header unchanged (no further restart).
///
/// The log alone cannot tell the old generation's last commit from a commit frame
/// written after it that never became a commit (its writer died, or failed, before
/// it updated the `-shm`): SQLite ignores such frames, and the new generation does
/// not build on them. So the pages whose newest version read is the old generation's
/// are returned in `from_old`, for the caller to find in the database file: the
/// restart's checkpoint left each page there as the old generation's last commit
/// had it.
pub fn since(
    log: &File,
    old: &Header,
    at: Position,
    max_bytes: u64,
) -> std::io::Result<Option<Since>> {
    let Some(header) = read_header(log)? else {
        return Ok(None);
    };
    let across = if header == *old {
        Across::Frames
    } else if at.frame > 0 && restarted_once(old, &header) {
        Across::Restart
    } else {
        return Ok(None);
    };
    if !continues(log, old, at)? {
        return Ok(None);
    }
    let Ok(first) = read_committed(log, old, at, max_bytes)? else {
        return Ok(None);
    };
    let mut since = Since {
        header,
        at: first.end.unwrap_or(at),
        db_pages: first.end.map(|_| first.db_pages),
        pages: first.pages,
        bytes_read: first.bytes_read,
        across,
        from_old: Vec::new(),
    };
    if across == Across::Restart {
        if first.ran_out {
            return Ok(None);
        }
        let start = Position {
            frame: 0,
            checksum: header.checksum,
        };
        let Ok(new) = read_committed(log, &header, start, max_bytes)? else {
            return Ok(None);
        };
        since.at = new.end.unwrap_or(start);
        if new.end.is_some() {
            since.db_pages = Some(new.db_pages);
        }
        since.from_old = since
            .pages
            .keys()
            .filter(|page| !new.pages.contains_key(page))
            .copied()
            .collect();
        since.pages.extend(new.pages);
        since.bytes_read += new.bytes_read;
        if since.pages.len() as u64 * u64::from(header.page_size) > max_bytes
            || !continues(log, old, at)?
        {
            return Ok(None);
        }
    }
    // A restart writes a new header before it overwrites a frame.
    if read_header(log)? != Some(header) {
        return Ok(None);
    }
    Ok(Some(since))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    /// A WAL database with a writer connection held open (so its log stays).
    fn writer(dir: &std::path::Path) -> Connection {
        let connection = Connection::open(dir.join("app.db")).unwrap();
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
                 CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);",
            )
            .unwrap();
        connection
    }

    fn open_wal(dir: &std::path::Path) -> File {
        File::open(dir.join("app.db-wal")).unwrap()
    }

    #[test]
    fn committed_frames_are_read_and_the_chain_continues_from_a_position() {
        let dir = tempfile::tempdir().unwrap();
        let connection = writer(dir.path());
        for id in 0..10 {
            connection
                .execute("INSERT INTO t VALUES (?1, zeroblob(3000))", [id])
                .unwrap();
        }
        let wal = open_wal(dir.path());
        let header = read_header(&wal).unwrap().unwrap();
        assert_eq!(header.page_size, 4096);
        let start = Position {
            frame: 0,
            checksum: header.checksum,
        };
        assert!(continues(&wal, &header, start).unwrap());
        let first = read_committed(&wal, &header, start, u64::MAX)
            .unwrap()
            .unwrap();
        let end = first.end.unwrap();
        let frames = (wal.metadata().unwrap().len() - HEADER_BYTES) / (FRAME_HEADER_BYTES + 4096);
        assert_eq!(u64::from(end.frame), frames, "every frame is committed");
        assert!(first.pages.contains_key(&1));
        assert!(continues(&wal, &header, end).unwrap());
        // Nothing after the end yet; then one more transaction is read from there.
        let none = read_committed(&wal, &header, end, u64::MAX)
            .unwrap()
            .unwrap();
        assert_eq!(none.end, None);
        connection
            .execute("INSERT INTO t VALUES (100, zeroblob(3000))", [])
            .unwrap();
        let more = read_committed(&wal, &header, end, u64::MAX)
            .unwrap()
            .unwrap();
        assert!(more.end.unwrap().frame > end.frame);
        assert_eq!(more.db_pages, first.db_pages + 1);
        // A wrong checksum at the position: not continued.
        let wrong = Position {
            frame: end.frame,
            checksum: [end.checksum[0] ^ 1, end.checksum[1]],
        };
        assert!(!continues(&wal, &header, wrong).unwrap());
        // The bound on memory.
        assert_eq!(
            read_committed(&wal, &header, start, 4096)
                .unwrap()
                .unwrap_err(),
            Break::TooLarge
        );
    }

    #[test]
    fn a_restarted_log_does_not_continue_and_a_torn_frame_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let connection = writer(dir.path());
        connection
            .execute("INSERT INTO t VALUES (1, zeroblob(3000))", [])
            .unwrap();
        let wal = open_wal(dir.path());
        let header = read_header(&wal).unwrap().unwrap();
        let end = read_committed(
            &wal,
            &header,
            Position {
                frame: 0,
                checksum: header.checksum,
            },
            u64::MAX,
        )
        .unwrap()
        .unwrap()
        .end
        .unwrap();
        // A full checkpoint and a new write restart the log with new salts.
        connection
            .query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
            .unwrap();
        connection
            .execute("INSERT INTO t VALUES (2, zeroblob(3000))", [])
            .unwrap();
        let restarted = read_header(&wal).unwrap().unwrap();
        assert_ne!(restarted.salts, header.salts);
        assert!(!continues(&wal, &restarted, end).unwrap());
        // A frame whose page bytes were damaged ends the chain before it.
        drop(connection);
        let copy = dir.path().join("copy-wal");
        let writer_dir = tempfile::tempdir().unwrap();
        let connection = writer(writer_dir.path());
        for id in 0..3 {
            connection
                .execute("INSERT INTO t VALUES (?1, zeroblob(3000))", [id])
                .unwrap();
        }
        std::fs::copy(writer_dir.path().join("app.db-wal"), &copy).unwrap();
        let whole = {
            let file = File::open(&copy).unwrap();
            let header = read_header(&file).unwrap().unwrap();
            let start = Position {
                frame: 0,
                checksum: header.checksum,
            };
            read_committed(&file, &header, start, u64::MAX)
                .unwrap()
                .unwrap()
                .end
                .unwrap()
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&copy)
            .unwrap();
        let last_page = HEADER_BYTES
            + u64::from(whole.frame - 1) * (FRAME_HEADER_BYTES + 4096)
            + FRAME_HEADER_BYTES
            + 100;
        file.write_all_at(&[0xAB; 8], last_page).unwrap();
        let header = read_header(&file).unwrap().unwrap();
        let start = Position {
            frame: 0,
            checksum: header.checksum,
        };
        let torn = read_committed(&file, &header, start, u64::MAX)
            .unwrap()
            .unwrap();
        assert!(torn.end.map_or(0, |end| end.frame) < whole.frame);
    }
}
