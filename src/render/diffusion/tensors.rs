//! Safetensors files read tensor by tensor, straight from the file into each tensor's
//! memory. Reading a whole file into memory first (renderq forbids the `unsafe` a
//! memory map needs) held a second copy of every weight and cost the kernel twice the
//! pages: loading a model now costs its own size in memory, once.

use std::{
    collections::HashMap,
    fs::File,
    io::{Read, Seek, SeekFrom},
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
        let mut file = File::open(e.file.as_path())?;
        file.seek(SeekFrom::Start(e.start))?;
        let tensor = if e.dtype == DType::F32 {
            // Straight into the tensor's own memory.
            let mut values = vec![0f32; e.len / 4];
            file.read_exact(bytemuck::cast_slice_mut(&mut values))?;
            Tensor::from_vec(values, e.shape.as_slice(), &Device::Cpu)?
        } else {
            let mut bytes = vec![0u8; e.len];
            file.read_exact(&mut bytes)?;
            Tensor::from_raw_buffer(&bytes, e.dtype, &e.shape, &Device::Cpu)?
        };
        tensor.to_device(device)
    }
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
