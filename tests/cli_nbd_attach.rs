//! `atrest nbd attach`, `detach` and `list` on the host: what a user gets when the
//! device name is wrong or the kernel has no NBD driver. Attaching for real needs the
//! kernel's nbd module, which this machine may not have: `tests/e2e/attach-vm.sh`
//! proves that inside a qemu guest.

mod common;

use std::path::Path;

use common::Home;

/// The kernel's nbd driver is loaded (then the "no driver" cases cannot happen here).
fn nbd_driver_loaded() -> bool {
    Path::new("/sys/module/nbd").exists()
}

fn stderr_lines(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_device_that_is_not_dev_nbd_n_is_refused_in_one_line() {
    let home = Home::new();
    let volume = home.file("v.vol");
    home.run(&[
        "volume",
        "create",
        volume.to_str().unwrap(),
        "--size",
        "16M",
        "--unencrypted",
    ]);
    for device in ["/dev/sda", "/dev/nbd01", "/dev/nbd0p1", "nbd0", "/dev/nbd"] {
        let out = home
            .atrest()
            .args(["nbd", "attach", volume.to_str().unwrap(), device])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{device}: {out:?}");
        let lines = stderr_lines(&out);
        assert_eq!(lines.len(), 1, "{device}: {lines:?}");
        assert!(lines[0].contains("is not an NBD device"), "{lines:?}");
        let out = home
            .atrest()
            .args(["nbd", "detach", device])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{device}: {out:?}");
        assert!(stderr_lines(&out)[0].contains("is not an NBD device"));
    }
}

#[test]
fn without_the_nbd_driver_every_command_says_modprobe_nbd_in_one_line() {
    if nbd_driver_loaded() {
        eprintln!("the nbd module is loaded here: tests/e2e/attach-vm.sh covers attach");
        return;
    }
    let home = Home::new();
    let volume = home.file("v.vol");
    home.run(&[
        "volume",
        "create",
        volume.to_str().unwrap(),
        "--size",
        "16M",
        "--unencrypted",
    ]);
    let volume = volume.to_str().unwrap();
    for args in [
        vec!["nbd", "attach", volume, "/dev/nbd0"],
        vec!["nbd", "attach", volume, "--device", "auto"],
        vec!["nbd", "detach", "/dev/nbd0"],
        vec!["nbd", "list"],
    ] {
        let out = home.atrest().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let lines = stderr_lines(&out);
        assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
        assert!(lines[0].contains("run `modprobe nbd`"), "{lines:?}");
        assert!(!lines[0].contains("os error"), "{lines:?}");
    }
}
