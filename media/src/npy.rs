//! Minimal `.npy` (NumPy format 1.0) for the two arrays samples are stored as: uint8 videos
//! and int64 labels, C order.

use std::io::{Read, Write};
use std::path::Path;

fn header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header, padded with spaces to a multiple of 64, ending in \n.
    let total = 10 + h.len() + 1;
    h.push_str(&" ".repeat((64 - total % 64) % 64));
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out
}

pub fn write_u8(path: &Path, shape: &[usize], data: &[u8]) -> std::io::Result<()> {
    assert_eq!(shape.iter().product::<usize>(), data.len());
    let mut f = std::fs::File::create(path)?;
    f.write_all(&header("|u1", shape))?;
    f.write_all(data)
}

pub fn write_i64(path: &Path, data: &[i64]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(&header("<i8", &[data.len()]))?;
    f.write_all(
        &data
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
}

/// Reads an array written by these functions (or NumPy) with the given dtype descriptor.
fn read(path: &Path, descr: &str) -> Result<(Vec<usize>, Vec<u8>), String> {
    let err = |m: String| format!("{}: {m}", path.display());
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| err(format!("cannot read: {e}")))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(err("not a .npy file".into()));
    }
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let h = std::str::from_utf8(
        bytes
            .get(10..10 + hlen)
            .ok_or_else(|| err("truncated header".into()))?,
    )
    .map_err(|_| err("header is not text".into()))?;
    if !h.contains(&format!("'descr': '{descr}'")) || h.contains("'fortran_order': True") {
        return Err(err(format!(
            "expected a C-order array of {descr}, header is {h}"
        )));
    }
    let inner = h
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| err("no shape".into()))?;
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| err(format!("bad shape {inner}"))))
        .collect::<Result<_, _>>()?;
    let data = bytes[10 + hlen..].to_vec();
    Ok((shape, data))
}

pub fn read_u8(path: &Path) -> Result<(Vec<usize>, Vec<u8>), String> {
    let (shape, data) = read(path, "|u1")?;
    if data.len() != shape.iter().product::<usize>() {
        return Err(format!(
            "{}: holds {} bytes, shape {shape:?} needs more",
            path.display(),
            data.len()
        ));
    }
    Ok((shape, data))
}

pub fn read_i64(path: &Path) -> Result<Vec<i64>, String> {
    let (shape, data) = read(path, "<i8")?;
    if data.len() != 8 * shape.iter().product::<usize>() {
        return Err(format!(
            "{}: size does not match shape {shape:?}",
            path.display()
        ));
    }
    Ok(data
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect())
}
