//! ControlNets by name: `--controlnet-dir` is read once at start-up (every subfolder with a
//! `config.json`, named by the folder, and every `*.safetensors` file, named by its stem; each folder's
//! config is parsed and each file's header read, so a broken one stops the server before it listens);
//! requests name them (A1111's `alwayson_scripts.controlnet.args[].model`) and never pass paths. The
//! weights load on a ControlNet's first use and stay loaded (`Pipeline::generate_batch`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lcm::models::ControlNetConfig;
use lcm_core::{Error, Result, SafeTensorsFile};

/// The preprocessors (A1111's "modules") a ControlNet unit may ask for: `/controlnet/module_list`.
pub const MODULES: &[&str] = &["none", "canny"];

/// The ControlNets a server may apply, by name.
#[derive(Debug, Default, Clone)]
pub struct ControlNetDir {
    /// `--controlnet-dir` (none: no request may use a ControlNet).
    pub dir: Option<PathBuf>,
    /// Name → a diffusers ControlNet folder or a `.safetensors` file.
    pub models: BTreeMap<String, PathBuf>,
}

impl ControlNetDir {
    /// Reads `dir` (none: no ControlNets). A folder with a `config.json` that is not a ControlNet's, a
    /// `.safetensors` file whose header cannot be read, or two ControlNets of one name (`x/` and
    /// `x.safetensors`) are an error naming them, at start-up rather than at a client's first request.
    /// Whether a ControlNet fits the served model is checked on its first use.
    pub fn scan(dir: Option<&Path>) -> Result<Self> {
        let Some(dir) = dir else { return Ok(ControlNetDir::default()) };
        let what = "--controlnet-dir";
        let entries = std::fs::read_dir(dir).map_err(|e| Error::file(dir, format!("cannot read {what}: {e}")))?;
        let mut models = BTreeMap::new();
        let mut paths: Vec<PathBuf> = Vec::new();
        for entry in entries {
            paths.push(entry.map_err(|e| Error::file(dir, format!("cannot read {what}: {e}")))?.path());
        }
        paths.sort();
        for path in paths {
            let name = if path.is_dir() && path.join("config.json").is_file() {
                ControlNetConfig::from_file(&path.join("config.json"))?;
                path.file_name()
            } else if path.is_file() && path.extension().is_some_and(|e| e == "safetensors") {
                SafeTensorsFile::open(&path)?;
                path.file_stem()
            } else {
                continue;
            };
            let name = name.map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            if let Some(other) = models.insert(name.clone(), path.clone()) {
                return Err(Error::invalid(
                    what,
                    format!("two ControlNets named `{name}`: {} and {} (rename one)", other.display(), path.display()),
                ));
            }
        }
        Ok(ControlNetDir { dir: Some(dir.to_path_buf()), models })
    }

    /// The ControlNet called `name` (A1111's list may show a hash after it, `name [1a2b3c4d]`: accepted
    /// too), or a message for a 400 listing the names there are.
    pub fn choose(&self, name: &str) -> std::result::Result<(String, PathBuf), String> {
        let stripped =
            name.trim_end().strip_suffix(']').and_then(|s| s.rsplit_once(" [")).map(|(n, _)| n).unwrap_or(name);
        for n in [name, stripped] {
            if let Some(path) = self.models.get(n) {
                return Ok((n.to_string(), path.clone()));
            }
        }
        let shown: String = name.chars().take(64).collect();
        if self.dir.is_none() {
            return Err(format!("no ControlNet `{shown}`: this server was started without --controlnet-dir"));
        }
        let known: Vec<&str> = self.models.keys().map(String::as_str).collect();
        Err(format!("no ControlNet `{shown}` in --controlnet-dir (there are: {})", known.join(", ")))
    }

    /// `msg` with the ControlNets' paths (and the folder's) replaced by their names: answers never show
    /// the server's paths.
    pub fn hide_paths(&self, msg: &str) -> String {
        let out = hide_paths(msg, self.models.iter().map(|(n, p)| (n.as_str(), p.as_path())));
        match &self.dir {
            Some(dir) => out.replace(&*dir.to_string_lossy(), "--controlnet-dir"),
            None => out,
        }
    }
}

/// `msg` with each of `named`'s paths replaced by its name (longest paths first, so a folder's path
/// does not cut a path inside it).
pub fn hide_paths<'a>(msg: &str, named: impl IntoIterator<Item = (&'a str, &'a Path)>) -> String {
    let mut named: Vec<(&str, &Path)> = named.into_iter().collect();
    named.sort_by_key(|(_, p)| std::cmp::Reverse(p.as_os_str().len()));
    let mut out = msg.to_string();
    for (name, path) in named {
        out = out.replace(&*path.to_string_lossy(), name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/controlnet")
    }

    #[test]
    fn scans_folders_and_files_by_name() {
        let d = ControlNetDir::scan(Some(&fixture_dir())).unwrap();
        let names: Vec<&str> = d.models.keys().map(String::as_str).collect();
        assert_eq!(names, ["cn-sd15-a", "cn-sd15-b", "cn-sdxl", "cn_sd15_a"]);
        assert_eq!(d.choose("cn-sd15-a").unwrap().1, fixture_dir().join("cn-sd15-a"));
        assert_eq!(d.choose("cn_sd15_a [0123abcd]").unwrap().0, "cn_sd15_a");
        let e = d.choose("../cn-sd15-a").unwrap_err();
        assert!(e.contains("there are: cn-sd15-a, cn-sd15-b, cn-sdxl, cn_sd15_a"), "{e}");
        let shown = d.hide_paths(&format!("{} does not fit", fixture_dir().join("cn-sdxl").display()));
        assert_eq!(shown, "cn-sdxl does not fit");
        let none = ControlNetDir::scan(None).unwrap();
        assert!(none.choose("cn-sd15-a").unwrap_err().contains("without --controlnet-dir"));
        assert!(ControlNetDir::scan(Some(Path::new("/no/such/dir"))).is_err());
    }

    #[test]
    fn a_broken_controlnet_or_a_name_twice_stops_the_scan() {
        let dir = std::env::temp_dir().join(format!("lcm-serve-cn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a")).unwrap();
        std::fs::write(dir.join("a/config.json"), "{\"_class_name\": \"UNet2DConditionModel\"}").unwrap();
        let e = ControlNetDir::scan(Some(&dir)).unwrap_err().to_string();
        assert!(e.contains("not a ControlNetModel"), "{e}");
        std::fs::copy(fixture_dir().join("cn-sd15-a/config.json"), dir.join("a/config.json")).unwrap();
        std::fs::write(dir.join("b.safetensors"), b"not safetensors").unwrap();
        assert!(ControlNetDir::scan(Some(&dir)).unwrap_err().to_string().contains("b.safetensors"));
        std::fs::copy(fixture_dir().join("cn_sd15_a.safetensors"), dir.join("b.safetensors")).unwrap();
        assert_eq!(ControlNetDir::scan(Some(&dir)).unwrap().models.len(), 2);
        std::fs::copy(fixture_dir().join("cn_sd15_a.safetensors"), dir.join("a.safetensors")).unwrap();
        let e = ControlNetDir::scan(Some(&dir)).unwrap_err().to_string();
        assert!(e.contains("two ControlNets named `a`"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
