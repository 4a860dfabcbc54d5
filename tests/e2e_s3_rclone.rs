//! rclone with its default settings for a generic S3 provider (ListObjects v1, path
//! style, single PUTs without encryption headers, server-side copy) against
//! `atrest s3 serve`: make a bucket, upload a tree, list, check, copy, read, delete.
//! Issue 21: every generic client failed its first plain upload before SSE-S3.

mod common;

use std::process::Command;

use common::{assert_success, contains, files_under, pseudo_random, require_tools, Home};
use serde_json::Value;

const REGION: &str = "us-east-1";
const USER: &str = "arn:aws:iam::000000000000:user/RcloneUser";

#[test]
fn rclone_with_default_settings_uploads_lists_copies_and_deletes() {
    if !require_tools(&["rclone"]) {
        return;
    }
    let home = Home::new();
    let out = home.run(&["iam", "create-access-key", "--principal", USER]);
    let answer: Value = serde_json::from_str(&out).expect("create-access-key prints JSON");
    let key = &answer["AccessKey"];
    let server = home.serve_env(
        &[("ATREST_REGION", REGION)],
        &["s3", "serve", "--listen", "127.0.0.1:0"],
    );
    let local = home.file("tree");
    std::fs::create_dir_all(local.join("sub")).unwrap();
    let big = pseudo_random(3 << 20, 21);
    std::fs::write(local.join("big.bin"), &big).unwrap();
    std::fs::write(local.join("a.txt"), b"RCLONE-PLAINTEXT-MARKER a").unwrap();
    std::fs::write(local.join("sub/b.txt"), b"RCLONE-PLAINTEXT-MARKER b").unwrap();
    let rclone = |args: &[&str]| {
        let out = Command::new("rclone")
            .args(args)
            .env("RCLONE_CONFIG", home.file("rclone.conf"))
            .env("RCLONE_CONFIG_ATREST_TYPE", "s3")
            .env("RCLONE_CONFIG_ATREST_PROVIDER", "Other")
            .env(
                "RCLONE_CONFIG_ATREST_ACCESS_KEY_ID",
                key["AccessKeyId"].as_str().unwrap(),
            )
            .env(
                "RCLONE_CONFIG_ATREST_SECRET_ACCESS_KEY",
                key["SecretAccessKey"].as_str().unwrap(),
            )
            .env(
                "RCLONE_CONFIG_ATREST_ENDPOINT",
                format!("http://{}", server.addr),
            )
            .env("RCLONE_CONFIG_ATREST_REGION", REGION)
            // A CA bundle for real AWS (a proxy's, say) makes rclone's SDK refuse
            // its own HTTP transport; the endpoint here is plain HTTP anyway.
            .env_remove("AWS_CA_BUNDLE")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .output()
            .expect("running rclone");
        assert_success(
            &format!("rclone {args:?} (server log:\n{})", server.log()),
            &out,
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let tree = local.to_str().unwrap();
    rclone(&["mkdir", "atrest:rcb"]);
    rclone(&["copy", tree, "atrest:rcb/dir"]);
    let listed = rclone(&["lsf", "-R", "atrest:rcb"]);
    for name in ["dir/a.txt", "dir/big.bin", "dir/sub/b.txt"] {
        assert!(listed.lines().any(|l| l == name), "{name} not in {listed}");
    }
    // Sizes and MD5s (the ETags of single-part SSE-S3 objects) agree.
    rclone(&["check", tree, "atrest:rcb/dir"]);
    rclone(&["copyto", "atrest:rcb/dir/big.bin", "atrest:rcb/copied.bin"]);
    let back = home.file("back.bin");
    rclone(&["copyto", "atrest:rcb/copied.bin", back.to_str().unwrap()]);
    assert_eq!(std::fs::read(&back).unwrap(), big);
    assert_eq!(
        rclone(&["cat", "atrest:rcb/dir/sub/b.txt"]),
        "RCLONE-PLAINTEXT-MARKER b"
    );
    // Encrypted at rest, under SSE-S3 (no header was sent).
    for path in files_under(&home.path().join("s3")) {
        let stored = std::fs::read(&path).unwrap();
        assert!(
            !contains(&stored, b"RCLONE-PLAINTEXT-MARKER"),
            "{}",
            path.display()
        );
        assert!(!contains(&stored, &big[..4096]), "{}", path.display());
    }
    rclone(&["deletefile", "atrest:rcb/copied.bin"]);
    rclone(&["purge", "atrest:rcb"]);
    let buckets = rclone(&["lsd", "atrest:"]);
    assert!(!buckets.contains(" rcb"), "{buckets}");
    server.stop();
}
