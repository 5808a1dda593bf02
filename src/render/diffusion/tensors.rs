//! Safetensors files read tensor by tensor, straight from the file into each tensor's
//! memory. Reading a whole file into memory first (renderq forbids the `unsafe` a
//! memory map needs) held a second copy of every weight and cost the kernel twice the
//! pages: loading a model now costs its own size in memory, once.

use std::{
    collections::HashMap,
    fs::File,
    io::Read,
    path::{Path, PathBuf},
    sync::Arc,
};

use candle_core::{DType, Device, Error, Result, Shape, Tensor};
use candle_nn::{Init, var_builder::SimpleBackend};

/// Where one tensor's bytes are.
#[derive(Debug, Clone)]
struct Entry {
    file: Arc<PathBuf>,
    dtype: DType,
    shape: Vec<usize>,
    /// Offset of its first byte in the file.
    start: u64,
    len: usize,
}

/// The tensors of one or more safetensors files (a model's shards), by name.
#[derive(Debug, Default)]
pub struct FileTensors {
    entries: HashMap<String, Entry>,
}

/// A safetensors file's header: the offset its data starts at, and each tensor's
/// description (`dtype`, `shape`, `data_offsets`).
pub fn header(
    path: &Path,
) -> std::result::Result<(u64, serde_json::Map<String, serde_json::Value>), String> {
    let fail = |why: String| format!("{}: not a safetensors file: {why}", path.display());
    let mut file = File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| fail(e.to_string()))?;
    let len = u64::from_le_bytes(len);
    // safetensors itself refuses headers over 100 MB.
    if len > 100_000_000 {
        return Err(fail(format!("a header of {len} bytes")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)
        .map_err(|e| fail(e.to_string()))?;
    let mut parsed: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| fail(e.to_string()))?;
    parsed.remove("__metadata__");
    Ok((8 + len, parsed))
}

fn dtype(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "I32" => DType::I32,
        "I16" => DType::I16,
        "U32" => DType::U32,
        "U8" => DType::U8,
        _ => return None,
    })
}

impl FileTensors {
    /// Reads the headers of `files`; a file that is not safetensors, or whose tensors
    /// lie past its end, is an error naming it.
    pub fn open(files: &[PathBuf]) -> std::result::Result<Self, String> {
        let mut entries = HashMap::new();
        for path in files {
            let (data, tensors) = header(path)?;
            let size = std::fs::metadata(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .len();
            let file = Arc::new(path.clone());
            for (name, info) in tensors {
                let bad = |why: &str| {
                    format!(
                        "{}: not a safetensors file: tensor `{name}` {why}",
                        path.display()
                    )
                };
                let dtype = info
                    .get("dtype")
                    .and_then(|d| d.as_str())
                    .and_then(dtype)
                    .ok_or_else(|| bad("has a type renderq does not read"))?;
                let shape: Vec<usize> = info
                    .get("shape")
                    .and_then(|s| s.as_array())
                    .and_then(|s| s.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
                    .ok_or_else(|| bad("has no shape"))?;
                let offsets: Vec<u64> = info
                    .get("data_offsets")
                    .and_then(|s| s.as_array())
                    .and_then(|s| s.iter().map(|d| d.as_u64()).collect())
                    .ok_or_else(|| bad("has no data offsets"))?;
                let [begin, end] = offsets[..] else {
                    return Err(bad("has no data offsets"));
                };
                let len = shape.iter().product::<usize>() * dtype.size_in_bytes();
                if end < begin || (end - begin) as usize != len || data + end > size {
                    return Err(bad("does not fit the file"));
                }
                let entry = Entry {
                    file: file.clone(),
                    dtype,
                    shape,
                    start: data + begin,
                    len,
                };
                entries.insert(name, entry);
            }
        }
        Ok(FileTensors { entries })
    }

    /// Whether it holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The tensor `name`, read from its file.
    pub fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| Error::CannotFindTensor { path: name.into() })?;
        let file = File::open(e.file.as_path())?;
        let tensor = if e.dtype == DType::F32 {
            // Straight into the tensor's own memory.
            let mut values = vec![0f32; e.len / 4];
            read_at(&file, e.start, bytemuck::cast_slice_mut(&mut values))?;
            Tensor::from_vec(values, e.shape.as_slice(), &Device::Cpu)?
        } else {
            let mut bytes = vec![0u8; e.len];
            read_at(&file, e.start, &mut bytes)?;
            Tensor::from_raw_buffer(&bytes, e.dtype, &e.shape, &Device::Cpu)?
        };
        tensor.to_device(device)
    }
}

/// Fewest bytes worth a reading thread of their own.
const BYTES_PER_THREAD: usize = 4 << 20;

/// Fills `out` from `file` at `start`, a large tensor in parts on as many threads as the
/// models compute on: most of a load's time is the kernel handing the tensors fresh
/// pages and copying the file's cached pages into them, which every core can do at once.
fn read_at(file: &File, start: u64, out: &mut [u8]) -> std::io::Result<()> {
    let threads = candle_core::utils::get_num_threads();
    read_in_parts(
        file,
        start,
        out,
        threads.clamp(1, (out.len() / BYTES_PER_THREAD).max(1)),
    )
}

/// Fills `out` from `file` at `start` in `threads` parts, one thread each.
#[cfg(unix)]
fn read_in_parts(file: &File, start: u64, out: &mut [u8], threads: usize) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    if threads <= 1 {
        return file.read_exact_at(out, start);
    }
    let per_thread = out.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = out
            .chunks_mut(per_thread)
            .enumerate()
            .map(|(i, part)| {
                let at = start + (i * per_thread) as u64;
                scope.spawn(move || file.read_exact_at(part, at))
            })
            .collect();
        parts.into_iter().try_for_each(|part| match part.join() {
            Ok(read) => read,
            Err(_) => Err(std::io::Error::other("a weight-reading thread panicked")),
        })
    })
}

/// Fills `out` from `file` at `start`.
#[cfg(not(unix))]
fn read_in_parts(mut file: &File, start: u64, out: &mut [u8], _: usize) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(out)
}

/// The dimensions without trailing ones: a 1×1 convolution's weight and the linear
/// layer's that replaces it compare equal.
fn squeezed(shape: &Shape) -> &[usize] {
    let dims = shape.dims();
    let keep = dims.iter().rposition(|&d| d != 1).map_or(0, |i| i + 1);
    &dims[..keep]
}

/// `tensor` in the shape a model asks for: as it is, or reshaped when they differ only
/// by trailing ones (the original layouts keep some linear layers as 1×1
/// convolutions); any other shape is an error naming the tensor.
pub fn shaped(tensor: Tensor, s: Shape, name: &str) -> Result<Tensor> {
    if tensor.shape() == &s {
        Ok(tensor)
    } else if squeezed(tensor.shape()) == squeezed(&s) {
        tensor.reshape(s)
    } else {
        Err(Error::UnexpectedShape {
            msg: format!("shape mismatch for {name}"),
            expected: s,
            got: tensor.shape().clone(),
        }
        .bt())
    }
}

impl SimpleBackend for FileTensors {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        shaped(self.load(name, dev)?, s, name)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.load(name, dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(tensors: &[(&str, Tensor)]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let map: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(k, t)| (k.to_string(), t.clone()))
            .collect();
        candle_core::safetensors::save(&map, &path).unwrap();
        (dir, path)
    }

    #[test]
    fn every_tensor_reads_back_as_written_in_its_own_type() {
        let f32s = Tensor::arange(0f32, 12., &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let f16s = f32s.to_dtype(DType::F16).unwrap();
        let (_dir, path) = write(&[("a.weight", f32s.clone()), ("b.weight", f16s)]);
        let read = FileTensors::open(&[path]).unwrap();
        let a = read.load("a.weight", &Device::Cpu).unwrap();
        assert_eq!(a.to_vec2::<f32>().unwrap(), f32s.to_vec2::<f32>().unwrap());
        let b = read.load("b.weight", &Device::Cpu).unwrap();
        assert_eq!(b.dtype(), DType::F16);
        let b = b.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(b, f32s.to_vec2::<f32>().unwrap());
        assert!(read.load("c.weight", &Device::Cpu).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_tensor_read_in_parts_on_several_threads_reads_back_whole() {
        // 12 MiB: several parts wherever more than one thread computes.
        let n = 3 * (1 << 20);
        let values = Tensor::arange(0u32, n as u32, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let tail = Tensor::arange(0f32, 5., &Device::Cpu).unwrap();
        let (_dir, path) = write(&[("big", values.clone()), ("tail", tail.clone())]);
        let read = FileTensors::open(&[path]).unwrap();
        let big = read.load("big", &Device::Cpu).unwrap();
        assert_eq!(
            big.to_vec1::<f32>().unwrap(),
            values.to_vec1::<f32>().unwrap()
        );
        let tail_read = read.load("tail", &Device::Cpu).unwrap();
        assert_eq!(
            tail_read.to_vec1::<f32>().unwrap(),
            tail.to_vec1::<f32>().unwrap()
        );
        // However many threads this machine has: three uneven parts.
        let entry = &read.entries["big"];
        let file = File::open(entry.file.as_path()).unwrap();
        use std::os::unix::fs::FileExt;
        let mut bytes = vec![0u8; entry.len - 2];
        read_in_parts(&file, entry.start + 1, &mut bytes, 3).unwrap();
        let mut whole = vec![0u8; entry.len];
        file.read_exact_at(&mut whole, entry.start).unwrap();
        assert!(bytes == whole[1..entry.len - 1]);
    }

    #[test]
    fn a_file_cut_short_is_refused_naming_it_and_the_tensor() {
        let t = Tensor::zeros((64, 64), DType::F32, &Device::Cpu).unwrap();
        let (_dir, path) = write(&[("big", t)]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let err = FileTensors::open(std::slice::from_ref(&path)).unwrap_err();
        assert!(
            err.contains("w.safetensors") && err.contains("`big`"),
            "{err}"
        );
        std::fs::write(&path, b"garbage").unwrap();
        let err = FileTensors::open(&[path]).unwrap_err();
        assert!(err.contains("not a safetensors file"), "{err}");
    }
}
