//! TensorBoard event files, written the way TensorFlow's `tf.summary` writes them, so that
//! TensorBoard (and anything reading its format) shows fastlightgen's runs: scalars (losses,
//! gradient norms, learning rates, throughput, eval scores) and PNG images (sample grids).
//!
//! The format: a file `events.out.tfevents.<time>.<host>.<pid>` of TFRecords, each an
//! `Event` protobuf (tensorflow/core/util/event.proto; only the fields used here are
//! declared), framed as `len: u64 LE, masked_crc32c(len): u32, data, masked_crc32c(data)`.
//! The first event names the file version. Each record is flushed as it is written, so a
//! reader (TensorBoard polls the directory) sees it at once and a crash loses at most one.

mod crc32c;

use prost::Message;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, PartialEq, Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(oneof = "What", tags = "3, 5")]
    what: Option<What>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

#[derive(Clone, PartialEq, Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<Value>,
}

#[derive(Clone, PartialEq, Message)]
struct Value {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(oneof = "Kind", tags = "2, 4")]
    kind: Option<Kind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Kind {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    #[prost(message, tag = "4")]
    Image(Image),
}

#[derive(Clone, PartialEq, Message)]
struct Image {
    #[prost(int32, tag = "1")]
    height: i32,
    #[prost(int32, tag = "2")]
    width: i32,
    /// 3: RGB, 4: RGBA.
    #[prost(int32, tag = "3")]
    colorspace: i32,
    #[prost(bytes = "vec", tag = "4")]
    encoded_image_string: Vec<u8>,
}

/// One event file, appended to as the run goes.
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl EventWriter {
    /// A new event file in `dir` (made if missing), named as TensorFlow names them; `host`
    /// tells writers on different machines apart.
    pub fn create(dir: &Path, host: &str) -> std::io::Result<EventWriter> {
        std::fs::create_dir_all(dir)?;
        let wall = now_unix();
        let host: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        // Two writers in one second in one process (a stage reopening its log) get
        // different names from the counter.
        static OPENED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!(
            "events.out.tfevents.{}.{host}.{}.{n}",
            wall as u64,
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        let mut w = EventWriter { file, path };
        w.write_event(&Event {
            wall_time: wall,
            step: 0,
            what: Some(What::FileVersion("brain.Event:2".into())),
        })?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_event(&mut self, event: &Event) -> std::io::Result<()> {
        let data = event.encode_to_vec();
        let len = (data.len() as u64).to_le_bytes();
        let mut record = Vec::with_capacity(data.len() + 16);
        record.extend_from_slice(&len);
        record.extend_from_slice(&crc32c::masked(&len).to_le_bytes());
        record.extend_from_slice(&data);
        record.extend_from_slice(&crc32c::masked(&data).to_le_bytes());
        self.file.write_all(&record)?;
        self.file.flush()
    }

    fn summary(&mut self, step: u64, values: Vec<Value>) -> std::io::Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        self.write_event(&Event {
            wall_time: now_unix(),
            step: step as i64,
            what: Some(What::Summary(Summary { value: values })),
        })
    }

    /// Scalars at `step`, one event for all of them; non-finite values are left out (a
    /// chart cannot draw them).
    pub fn scalars<'a>(
        &mut self,
        step: u64,
        values: impl IntoIterator<Item = (&'a str, f64)>,
    ) -> std::io::Result<()> {
        let values = values
            .into_iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(tag, v)| Value {
                tag: tag.to_string(),
                kind: Some(Kind::SimpleValue(v as f32)),
            })
            .collect();
        self.summary(step, values)
    }

    /// A PNG image (`png`: the file's bytes, `width` x `height`, RGB or RGBA by `channels`)
    /// at `step`.
    pub fn png(
        &mut self,
        tag: &str,
        step: u64,
        png: Vec<u8>,
        width: u32,
        height: u32,
        channels: u8,
    ) -> std::io::Result<()> {
        self.summary(
            step,
            vec![Value {
                tag: tag.to_string(),
                kind: Some(Kind::Image(Image {
                    height: height as i32,
                    width: width as i32,
                    colorspace: i32::from(channels),
                    encoded_image_string: png,
                })),
            }],
        )
    }

    /// A PNG file as an image at `step`; its size and colour type come from its header.
    pub fn png_file(&mut self, tag: &str, step: u64, path: &Path) -> std::io::Result<()> {
        let bytes = std::fs::read(path)?;
        let (width, height, channels) = png_header(&bytes).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: not an RGB or RGBA PNG", path.display()),
            )
        })?;
        self.png(tag, step, bytes, width, height, channels)
    }
}

/// Width, height and channels (3 or 4) from a PNG's signature and IHDR chunk.
fn png_header(b: &[u8]) -> Option<(u32, u32, u8)> {
    if b.len() < 26 || &b[..8] != b"\x89PNG\r\n\x1a\n" || &b[12..16] != b"IHDR" {
        return None;
    }
    let width = u32::from_be_bytes(b[16..20].try_into().ok()?);
    let height = u32::from_be_bytes(b[20..24].try_into().ok()?);
    let channels = match b[25] {
        2 => 3,
        6 => 4,
        _ => return None,
    };
    Some((width, height, channels))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the records back, checking both checksums of each.
    fn records(path: &Path) -> Vec<Event> {
        let bytes = std::fs::read(path).unwrap();
        let mut at = 0;
        let mut out = Vec::new();
        while at < bytes.len() {
            let len_bytes = &bytes[at..at + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            assert_eq!(crc, crc32c::masked(len_bytes));
            let data = &bytes[at + 12..at + 12 + len];
            let crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
            assert_eq!(crc, crc32c::masked(data));
            out.push(Event::decode(data).unwrap());
            at += 16 + len;
        }
        out
    }

    #[test]
    fn events_round_trip_through_their_framing() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(&dir.path().join("tb"), "node 1").unwrap();
        assert!(w
            .path()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("events.out.tfevents."));
        w.scalars(7, [("pruning/loss", 0.25), ("pruning/bad", f64::NAN)])
            .unwrap();
        w.png("eval/student", 3, vec![1, 2, 3], 4, 5, 3).unwrap();
        let ev = records(w.path());
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0].what, Some(What::FileVersion("brain.Event:2".into())));
        let Some(What::Summary(s)) = &ev[1].what else {
            panic!()
        };
        assert_eq!(ev[1].step, 7);
        assert_eq!(s.value.len(), 1, "NaN is left out");
        assert_eq!(s.value[0].kind, Some(Kind::SimpleValue(0.25)));
        let Some(What::Summary(s)) = &ev[2].what else {
            panic!()
        };
        let Some(Kind::Image(img)) = &s.value[0].kind else {
            panic!()
        };
        assert_eq!((img.width, img.height, img.colorspace), (4, 5, 3));
    }
}
