//! `ExportSet::reload`: which exports are added, swapped, removed or left alone, and
//! that an export whose new volume cannot be opened keeps serving the old one.

use std::path::Path;
use std::sync::Arc;

use blockdev::lifecycle::exports::{load_exports, ExportSet, ExportSpec, ReloadReport};
use blockdev::nbd::Server;
use blockdev::volume::{self, NewVolumeKey, Volume};
use crypto_core::kms::{LocalKms, LocalKmsConfig};

fn create(dir: &Path, name: &str, size: u64) {
    volume::create(&dir.join(name), size, NewVolumeKey::Unencrypted).unwrap();
}

fn size_of(set: &ExportSet, name: &str) -> Option<u64> {
    set.table()
        .read()
        .unwrap()
        .get(name)
        .map(|e| e.volume.size())
}

#[test]
fn reload_adds_swaps_removes_and_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let kms = Arc::new(LocalKms::open(&dir.path().join("home"), LocalKmsConfig::new()).unwrap());
    create(dir.path(), "a.vol", 1 << 20);
    create(dir.path(), "b.vol", 2 << 20);
    create(dir.path(), "c.vol", 3 << 20);
    let file = dir.path().join("exports.toml");
    let write = |text: &str| std::fs::write(&file, text).unwrap();
    write(
        "[[export]]\nname = \"root\"\npath = \"a.vol\"\n\
         [[export]]\nname = \"keep\"\npath = \"b.vol\"\ndescription = \"old\"\n\
         [[export]]\nname = \"gone\"\npath = \"c.vol\"\n",
    );
    let opener_kms = Arc::clone(&kms);
    let opener = move |spec: &ExportSpec| -> Result<Arc<dyn Volume>, blockdev::Error> {
        volume::open(&spec.path, &*opener_kms, spec.read_only)
    };
    let mut set = ExportSet::open(load_exports(&file).unwrap(), Box::new(opener)).unwrap();
    let server = Server::bind("127.0.0.1:0", set.table()).unwrap();
    let handle = server.shutdown_handle();
    let kept = Arc::clone(&set.table().read().unwrap()["keep"].volume);

    write(
        "[[export]]\nname = \"root\"\npath = \"c.vol\"\n\
         [[export]]\nname = \"keep\"\npath = \"b.vol\"\ndescription = \"new\"\n\
         [[export]]\nname = \"fresh\"\npath = \"a.vol\"\n",
    );
    let report = set.reload(load_exports(&file).unwrap(), &handle);
    assert_eq!(
        report,
        ReloadReport {
            added: vec!["fresh".into()],
            swapped: vec!["root".into()],
            removed: vec!["gone".into()],
            unchanged: vec!["keep".into()],
            failed: vec![],
        }
    );
    assert_eq!(size_of(&set, "root"), Some(3 << 20));
    assert_eq!(size_of(&set, "gone"), None);
    {
        let table = set.table();
        let table = table.read().unwrap();
        let keep = &table["keep"];
        assert!(
            Arc::ptr_eq(&keep.volume, &kept),
            "an untouched export was reopened"
        );
        assert_eq!(keep.description.as_deref(), Some("new"));
    }
    drop(kept);

    // The same path, but another file there now (a copy renamed over it): swapped.
    std::fs::remove_file(dir.path().join("b.vol")).unwrap();
    create(dir.path(), "b.vol", 4 << 20);
    // And a path that cannot be opened: the export keeps its volume.
    write(
        "[[export]]\nname = \"root\"\npath = \"missing.vol\"\n\
         [[export]]\nname = \"keep\"\npath = \"b.vol\"\n\
         [[export]]\nname = \"fresh\"\npath = \"a.vol\"\n",
    );
    let report = set.reload(load_exports(&file).unwrap(), &handle);
    assert_eq!(report.swapped, vec!["keep".to_string()]);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].0, "root");
    assert_eq!(size_of(&set, "keep"), Some(4 << 20));
    assert_eq!(size_of(&set, "root"), Some(3 << 20));
}

#[test]
fn a_bad_exports_file_fails_to_open_with_the_export_named() {
    let dir = tempfile::tempdir().unwrap();
    let kms = Arc::new(LocalKms::open(dir.path(), LocalKmsConfig::new()).unwrap());
    let specs = vec![ExportSpec {
        name: "root".into(),
        path: dir.path().join("nope.vol"),
        read_only: false,
        description: None,
        allowed_clients: vec![],
        format: blockdev::volume::ImageFormat::Atrest,
    }];
    let opener = move |spec: &ExportSpec| volume::open(&spec.path, &*kms, spec.read_only);
    let err = ExportSet::open(specs, Box::new(opener)).unwrap_err();
    assert!(err.to_string().contains("\"root\""), "{err}");
}
