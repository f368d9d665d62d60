//! The unpickler and the tensor views: the input is a torch.save archive's `data.pkl`, packed
//! (with a valid CRC) beside four small storages, so every input reaches the pickle machine.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::sync::OnceLock;

#[path = "../../tests/common/readers.rs"]
mod readers;

fn archive(pkl: &[u8]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut out);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut put = |name: &str, bytes: &[u8]| {
        z.start_file(name, opts).unwrap();
        z.write_all(bytes).unwrap();
    };
    put("archive/data.pkl", pkl);
    put("archive/byteorder", b"little");
    for i in 0..4 {
        let storage: Vec<u8> = (0..64u32 << i).map(|v| v as u8).collect();
        put(&format!("archive/data/{i}"), &storage);
    }
    z.finish().unwrap();
    out.into_inner()
}

fuzz_target!(|data: &[u8]| {
    static SCRATCH: OnceLock<readers::Scratch> = OnceLock::new();
    let s = SCRATCH.get_or_init(|| readers::Scratch::new("fuzz-pickle"));
    readers::checkpoint(s, &archive(data));
});
