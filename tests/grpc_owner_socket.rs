//! `tvix_store::host::serve_owner_socket`, the library call long-running commands (mount,
//! virtiofs) use to share the default store they own: other processes' clients find the
//! store's socket and use it; dropping the guard stops serving and removes the socket.
//!
//! A test binary of its own, not a module of `integration`, and one test in it only: it sets
//! TVIX_STORE_DIR (which the library reads) for the whole process, before any other thread
//! exists; beside other tests it would race their threads and change their default store.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tvix_store::castore::{B3Digest, Error};
use tvix_store::compose::defaultstore::SOCKET_NAME;
use tvix_store::compose::{self, Role, StoreArgs};

#[test]
fn owner_socket_serves_the_default_store_until_dropped() {
    let store = tempfile::tempdir().unwrap();
    // SAFETY: no other thread exists yet in this test binary (single test, runtime built below).
    unsafe { std::env::set_var("TVIX_STORE_DIR", store.path()) };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let socket = store.path().join(SOCKET_NAME);
        let owner = compose::open(&StoreArgs::default(), Role::Owner).await.unwrap();
        assert!(owner.store_lock.is_some());
        let guard = tvix_store::host::serve_owner_socket(&owner)
            .await
            .unwrap()
            .expect("the default store opened as owner is served");
        assert_eq!(guard.path(), socket);
        assert!(socket.exists());

        // A client (as a second command would open it) goes through the socket, not the files.
        let client = compose::open(&StoreArgs::default(), Role::Client).await.unwrap();
        assert!(client.store_lock.is_none(), "the client must use the owner's socket");
        let mut w = client.store.blob.open_write().await;
        w.write_all(b"written by a client through the owner").await.unwrap();
        let digest = w.close().await.unwrap();
        assert_eq!(digest, B3Digest::of(b"written by a client through the owner"));
        assert!(owner.store.blob.has(&digest).await.unwrap(), "the owner's store has what the client wrote");

        // Services given by address are not the default store: nothing to serve.
        let by_addr = StoreArgs {
            blob: Some("memory://".into()),
            directory: Some("memory://".into()),
            path_info: Some("memory://".into()),
            ..StoreArgs::default()
        };
        let other = compose::open(&by_addr, Role::Owner).await.unwrap();
        assert!(tvix_store::host::serve_owner_socket(&other).await.unwrap().is_none());

        // shutdown() waits for the server to stop; a bare drop only signals it (a call racing
        // the drop may still be answered), which is what commands do on their way out.
        guard.shutdown().await.unwrap();
        assert!(!socket.exists(), "shutting down removes the socket");
        let call = tokio::time::timeout(Duration::from_secs(10), client.store.blob.has(&digest)).await;
        match call {
            Ok(Err(Error::Unavailable(_))) => {}
            other => panic!("a call after the owner stopped serving must fail as unavailable: {other:?}"),
        }

        let again = tvix_store::host::serve_owner_socket(&owner).await.unwrap().expect("served again");
        assert!(socket.exists());
        drop(again);
        assert!(!socket.exists(), "dropping the guard removes the socket");
    });
}
