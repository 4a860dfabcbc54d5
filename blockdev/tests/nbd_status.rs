//! The status file a running NBD server keeps (`blockdev::nbd::status`): a client
//! that connects, attaches and leaves is published at each step, and the file goes
//! when the server stops.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use blockdev::nbd::status::{self, Listed, ServerDescription, ServerStatus, StatusBoard};
use blockdev::nbd::{Export, ExportTable, Server};
use blockdev::volume::{self, NewVolumeKey};

fn running(dir: &Path) -> ServerStatus {
    let listed = status::list(dir);
    match listed.as_slice() {
        [Listed::Running(status)] => status.clone(),
        other => panic!("expected one running server, found {other:?}"),
    }
}

fn until(what: &str, dir: &Path, check: impl Fn(&ServerStatus) -> bool) -> ServerStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = running(dir);
        if check(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: {status:?}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_client_is_published_from_connect_to_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.vol");
    volume::create(&path, 1 << 20, NewVolumeKey::Unencrypted).unwrap();
    let volume = volume::open_without_key(&path, false).unwrap().into_dyn();
    let table: ExportTable = Arc::new(RwLock::new(BTreeMap::from([(
        "root".to_owned(),
        Export {
            volume,
            read_only: false,
            description: Some("the root volume".into()),
            allowed_clients: Vec::new(),
        },
    )])));
    let run = dir.path().join("run/nbd");
    let server = Server::bind("127.0.0.1:0", table).unwrap();
    let board = Arc::new(
        StatusBoard::publish(
            &run,
            ServerDescription {
                listen: vec![server.local_addr().to_string()],
                tls: None,
                client_certificates: false,
                exports_file: None,
                exports: Vec::new(),
            },
        )
        .unwrap(),
    );
    let server = server.with_status(Arc::clone(&board));
    let addr = server.local_addr();
    let shutdown = server.shutdown_handle();
    let thread = thread::spawn(move || server.run());
    assert!(running(&run).clients.is_empty());

    // Fixed newstyle by hand: greeting, client flags, then NBD_OPT_EXPORT_NAME.
    let mut client = TcpStream::connect(addr).unwrap();
    let mut greeting = [0u8; 18];
    client.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
    client.write_all(&3u32.to_be_bytes()).unwrap();
    let negotiating = until("the connection", &run, |s| s.clients.len() == 1);
    assert_eq!(negotiating.clients[0].export, None);
    assert_eq!(
        negotiating.clients[0].address,
        client.local_addr().unwrap().to_string()
    );
    let mut option = b"IHAVEOPT".to_vec();
    option.extend_from_slice(&1u32.to_be_bytes());
    option.extend_from_slice(&4u32.to_be_bytes());
    option.extend_from_slice(b"root");
    client.write_all(&option).unwrap();
    let mut reply = [0u8; 10];
    client.read_exact(&mut reply).unwrap();
    assert_eq!(u64::from_be_bytes(reply[..8].try_into().unwrap()), 1 << 20);
    let attached = until("the attach", &run, |s| {
        s.clients
            .first()
            .is_some_and(|c| c.export.as_deref() == Some("root"))
    });
    assert_eq!(attached.clients[0].tls_identity, None);

    drop(client);
    until("the disconnection", &run, |s| s.clients.is_empty());
    shutdown.shutdown();
    thread.join().unwrap().unwrap();
    // The server's run is over; the CLI retires the board (the reload thread may
    // still hold it).
    board.retire();
    assert!(status::list(&run).is_empty());
}
