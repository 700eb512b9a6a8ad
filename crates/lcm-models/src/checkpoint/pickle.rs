//! lcm never unpickles: a PyTorch pickle (`.bin`, `.ckpt`, `.pt`, `.pth`) where safetensors were
//! expected is recognised, by name or by its first bytes, and refused with a way to convert it.

use std::path::Path;

use lcm_core::Error;

/// The error for a PyTorch pickle (`.bin`, `.ckpt`, `.pt`, `.pth`) where safetensors were expected.
pub fn pickle_refusal(path: &Path) -> Error {
    Error::file(
        path,
        "is a PyTorch pickle; lcm never unpickles (loading a pickle can run arbitrary code). Convert it to safetensors, e.g. \
         `python -c \"import torch, safetensors.torch as st; sd = torch.load('IN', weights_only=True); \
         sd = sd.get('state_dict', sd); st.save_file({k: v.contiguous().clone() for k, v in sd.items() if isinstance(v, torch.Tensor)}, 'OUT.safetensors')\"`, \
         or load it with diffusers and save_pretrained(..., safe_serialization=True)",
    )
}

/// Whether `path` is a pickle by its name or its first bytes: a zip archive (`torch.save` since 1.6)
/// or the legacy format's opening (PROTO 2, then the LONG1 magic number). A safetensors file starts
/// with its header length, which would have to be ~176 MB to begin with those legacy bytes.
pub fn is_pickle(path: &Path) -> bool {
    let by_name = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "ckpt" | "pt" | "pth" | "bin" | "pkl"));
    let mut head = [0u8; 4];
    let by_magic = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|()| head == *b"PK\x03\x04" || head == [0x80, 0x02, 0x8a, 0x0a]);
    by_name || by_magic
}
