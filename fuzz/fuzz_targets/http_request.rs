//! Any request through the boot server's HTTP routes (the per-client script, image files,
//! iPXE files, stage reports and the client list), on a store with one image. Invariants: no
//! panic and no 500; nothing outside the image files is ever sent (a file beside the store
//! and one inside the image directory are never in a body); an image file sent is the one
//! its URL names; an accepted report is in the record under the MAC it names, with a stage
//! of 1-32 of a-z, 0-9, '-', as the last stage its boot reported; a report with a fresh boot's
//! token is never refused (403), one with an earlier boot's token or another MAC's never
//! accepted (200).
//!
//! Input: one byte picks the method, one the content type (its low two bits) and the report
//! token (the next two: as the input has it; or the harness starts a new boot of the MAC the
//! path names and puts its token in the query, or that MAC's previous boot's, or another
//! MAC's), then the path and query up to the first newline, then the body.
#![no_main]

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use diskless_boot::routes::Route;
use diskless_boot::Mac;
use diskless_boot::{Site, Stage};
use diskless_image::manifest::{BOOT_CPIO, INITRD, KERNEL, SQUASHFS};
use diskless_image::store::Store;
use diskless_server::access::Access;
use diskless_server::booter::Booter;
use diskless_server::http::{router, HttpState};
use diskless_server::metrics::Metrics;
use diskless_server::recorder::{Limits, Recorder, RecorderTask};
use diskless_server::shared_json::{JsonLimit, SharedJson};
use diskless_server::tokens::{Boots, ReportKey, KEY_LEN};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use tokio::sync::watch;
use tower::ServiceExt;

const SECRET: &str = "never served";
const FILES: [(&str, &str); 4] = [
    (SQUASHFS, "squashfs bytes"),
    (KERNEL, "kernel bytes"),
    (INITRD, "initrd bytes"),
    (BOOT_CPIO, "cpio bytes"),
];

/// The server's state as `diskless serve` builds it (a site, the store, a recorder), built
/// once: the recorder keeps what every run reported, so a run checks the record of its own
/// MAC after the recorder has caught up.
struct Fixture {
    _dir: tempfile::TempDir,
    state: Arc<HttpState>,
    _site: watch::Sender<Arc<Site>>,
    _recorder: RecorderTask,
    runtime: tokio::runtime::Runtime,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store_dir = dir.path().join("store");
        let store = Store::open(&store_dir).unwrap();
        let files = FILES.map(|(name, content)| (name, content.as_bytes()));
        store.publish_files("lab", "v1", &files).unwrap();
        std::fs::write(dir.path().join("secret"), SECRET).unwrap();
        std::fs::write(store_dir.join("images/lab/v1/secret"), SECRET).unwrap();
        let ipxe = dir.path().join("ipxe");
        std::fs::create_dir(&ipxe).unwrap();
        std::fs::write(ipxe.join("ipxe.efi"), "efi bytes").unwrap();
        let (site, site_rx) = watch::channel(Arc::new(Site::for_tests(
            "http_port = 8080\n[boot]\nimage = \"lab\"\n\n[[client]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"pc01\"\n",
        )));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // The recorder's task runs on the fuzzer's runtime, whenever a run blocks on it.
        // A small client table: the oldest record is dropped often, and the client list a run
        // may ask for stays cheap. At the default bound (1,000 clients) the list the fuzzer asked for
        // grew with every run, and serializing it slowed the target from about 2,700 runs a
        // second to 1,000 within 20 minutes (perf: serde_json under /api/clients).
        let limits = Limits {
            max_clients: 64,
            ..Limits::default()
        };
        let (recorder, task) = runtime.block_on(async { Recorder::start(None, limits) });
        let boots = Arc::new(Boots::new(
            ReportKey::from_bytes([9; KEY_LEN]),
            recorder.clone(),
        ));
        let booter = Booter::new(
            site_rx.clone(),
            store.clone(),
            recorder.clone(),
            boots.clone(),
            diskless_boot::grub::GrubNet::TftpAndHttp,
        );
        let state = Arc::new(HttpState {
            site: site_rx,
            store,
            recorder,
            boots,
            booter: Arc::new(booter),
            ipxe_dir: ipxe,
            ipxe_files: vec!["ipxe.efi".into()],
            access: Access::new(Arc::new(Metrics::new())),
            clients_json: SharedJson::default(),
            json_limit: JsonLimit::default(),
            multicast: Default::default(),
        });
        Fixture {
            _dir: dir,
            state,
            _site: site,
            _recorder: task,
            runtime,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let f = fixture();
    let method = ["GET", "POST", "HEAD", "PUT", "OPTIONS"][usize::from(data[0]) % 5];
    let content_type = [
        Some("application/x-www-form-urlencoded"),
        None,
        Some("application/json"),
        Some("text/plain"),
    ][usize::from(data[1]) % 4];
    let token = Token::ALL[usize::from(data[1] >> 2) % 4];
    let rest = &data[2..];
    let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let Ok(uri) = std::str::from_utf8(&rest[..end]) else {
        return;
    };
    // The harness puts a token in only where its own reading of the input names a route; where
    // it does not (e.g. a `#` the HTTP parser drops from the path, which also hides the query
    // the harness would add: found by this target), the report goes as given.
    let (uri, token) = match (token, Route::parse(uri.split('?').next().unwrap_or(""))) {
        (Token::AsGiven, _) | (_, Err(_)) => (uri.to_string(), Token::AsGiven),
        (chosen, Ok(route)) => {
            // The MAC the path names, or any for a path that names none.
            let mac = match route {
                Route::Report(mac) | Route::BootScript(mac) => mac,
                _ => Mac([0x52, 0x54, 0, 0, 0, 1]),
            };
            let boots = &f.state.boots;
            let token = match token {
                Token::Fresh => boots.issue(mac),
                Token::Earlier => {
                    let earlier = boots.issue(mac);
                    boots.issue(mac);
                    earlier
                }
                _ => {
                    let mut other = mac;
                    other.0[5] ^= 1;
                    boots.issue(other)
                }
            };
            let path = uri.split('?').next().unwrap_or("");
            (format!("{path}?token={token}"), chosen)
        }
    };
    let uri = uri.as_str();
    let body = rest.get(end + 1..).unwrap_or_default().to_vec();
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        request = request.header(header::CONTENT_TYPE, ct);
    }
    let Ok(request) = request.body(Body::from(body)) else {
        return; // not a URI the HTTP parser would have handed us
    };
    let path = request.uri().path().to_string();
    let route = Route::parse(&path);
    if let Ok(route) = &route {
        // The table's own URL for a route parses back to that route.
        assert_eq!(Route::parse(&route.path()).as_ref(), Ok(route), "{path}");
    }
    let (status, body) = f.runtime.block_on(async {
        let response = router(f.state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, body)
    });
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{method} {uri}");
    let text = String::from_utf8_lossy(&body);
    assert!(
        !text.contains(SECRET),
        "{method} {uri} sent a file it must not"
    );
    if status.is_success() && method == "GET" {
        if let Ok(Route::ImageFile { .. }) = &route {
            let file = path.strip_prefix("/images/lab/v1/");
            let expected = FILES.iter().find(|(name, _)| Some(*name) == file);
            assert_eq!(Some(text.as_ref()), expected.map(|(_, c)| *c), "{uri}");
        }
    }
    if method == "POST" && matches!(route, Ok(Route::Report(_))) {
        match token {
            Token::Fresh => assert_ne!(status, StatusCode::FORBIDDEN, "{uri}: {text}"),
            Token::Earlier | Token::OtherMac => assert_ne!(status, StatusCode::OK, "{uri}: {text}"),
            Token::AsGiven => {}
        }
    }
    if status == StatusCode::OK && method == "POST" {
        let Ok(Route::Report(mac)) = route else {
            panic!("{uri}: a POST accepted that is not a report");
        };
        let record = f.state.recorder.get(mac).expect("the report was recorded");
        let stage = record.stage();
        assert!(
            (1..=32).contains(&stage.len())
                && stage
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "stage {stage:?}"
        );
        let boot = f.state.boots.current(mac).expect("a current boot");
        assert_eq!(boot.reported.last().map(Stage::as_str), Some(stage));
        assert_eq!(
            record.boot.as_ref(),
            Some(&boot),
            "the record keeps the boot"
        );
    }
});

/// Which report token the request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// Whatever the input's query says (a made-up token, almost always).
    AsGiven,
    /// The token of a new boot of the MAC the path names.
    Fresh,
    /// The token of that MAC's boot before the current one.
    Earlier,
    /// The current token of another MAC.
    OtherMac,
}

impl Token {
    const ALL: [Token; 4] = [
        Token::AsGiven,
        Token::Fresh,
        Token::Earlier,
        Token::OtherMac,
    ];
}
