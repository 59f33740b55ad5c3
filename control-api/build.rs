//! Embeds the web demo: every file directly in `web-demo/` (not its `tests/`) becomes an entry
//! of `WEB_ASSETS` in `$OUT_DIR/web_assets.rs`, so the server binary needs no files beside it
//! and a new module of the demo is served without touching this crate.

use std::fs;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../web-demo");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut entries: Vec<(String, String)> = Vec::new();
    if let Ok(read) = fs::read_dir(&dir) {
        for entry in read.flatten() {
            let path = entry.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            let served = ["html", "js", "css", "svg", "png", "ico", "json"]
                .iter()
                .any(|ext| name.ends_with(&format!(".{ext}")));
            if path.is_file() && served && !name.starts_with('.') {
                println!("cargo:rerun-if-changed={}", path.display());
                let absolute = fs::canonicalize(&path).unwrap_or(path);
                entries.push((name, absolute.display().to_string()));
            }
        }
    }
    entries.sort();
    let mut code = String::from(
        "/// The web demo's files: (name, bytes).\npub(crate) const WEB_ASSETS: &[(&str, &[u8])] = &[\n",
    );
    for (name, path) in entries {
        code.push_str(&format!("    ({name:?}, include_bytes!({path:?})),\n"));
    }
    code.push_str("];\n");
    let out = Path::new(&std::env::var("OUT_DIR").unwrap_or_default()).join("web_assets.rs");
    if let Err(e) = fs::write(&out, code) {
        panic!("cannot write {}: {e}", out.display());
    }
}
