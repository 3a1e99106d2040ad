//! The HTTP side of the boot server: per-client iPXE scripts, image files (with Range, so an
//! interrupted download resumes), iPXE binaries for UEFI HTTP boot, and boot stage reports.
//!
//! One handler reads every request: [`Route::parse`] says which of the server's URLs it is
//! (the table is in [`diskless_boot::routes`]), a `match` answers it. Scripts come from the
//! boot decision of the site current at the time of the request ([`Site::boot_spec`]), so a
//! reload applies to the next request. What clients fetch and report goes to the
//! [`Recorder`] without waiting.

use crate::recorder::{BootEvent, Recorder};
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form, Json, Router};
use diskless_boot::grub;
use diskless_boot::routes::{ImageFile, Route, RouteError};
use diskless_boot::script::{self, ImageRef, ScriptParams};
use diskless_boot::{Mac, Machine, Site};
use diskless_image::Store;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;
use tower::ServiceExt;
use tower_http::services::ServeFile;

/// What the HTTP handlers share.
pub struct HttpState {
    /// The current site; a reload replaces it.
    pub site: watch::Receiver<Arc<Site>>,
    pub store: Store,
    pub recorder: Recorder,
    /// Directory holding the iPXE binaries we serve.
    pub ipxe_dir: PathBuf,
    /// The iPXE binaries that may be fetched.
    pub ipxe_files: Vec<String>,
}

pub fn router(state: Arc<HttpState>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn handle(
    State(state): State<Arc<HttpState>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    request: Request,
) -> Response {
    let peer = connect.map(|Extension(ConnectInfo(addr))| addr.ip());
    let route = match Route::parse(request.uri().path()) {
        Ok(route) => route,
        Err(e) => {
            let status = match e {
                RouteError::Mac(_) => StatusCode::BAD_REQUEST,
                RouteError::ImageFile(_) | RouteError::Ipxe(_) => {
                    tracing::warn!(path = %request.uri().path(), "refused a request outside the served files");
                    StatusCode::NOT_FOUND
                }
                _ => StatusCode::NOT_FOUND,
            };
            return text(status, format!("{e}\n"));
        }
    };
    let get = matches!(*request.method(), Method::GET | Method::HEAD);
    match route {
        Route::Index if get => text(StatusCode::OK, "diskless boot server\n".into()),
        Route::BootScript(mac) if get => boot_script(&state, mac, peer),
        Route::ImageFile {
            image,
            version,
            file,
        } if get => image_file(&state, image, version, file, peer, request).await,
        Route::Ipxe(file) if get => {
            if !state.ipxe_files.contains(&file) {
                return text(StatusCode::NOT_FOUND, "no such iPXE file\n".into());
            }
            serve_file(state.ipxe_dir.join(&file), request).await
        }
        Route::Report(mac) if request.method() == Method::POST => {
            match Form::<Report>::from_request(request, &()).await {
                Ok(Form(r)) => report(&state, mac, peer, r),
                Err(rejection) => rejection.into_response(),
            }
        }
        Route::Clients if get => Json(state.recorder.snapshot()).into_response(),
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        ),
    }
}

fn boot_script(state: &HttpState, mac: Mac, peer: Option<IpAddr>) -> Response {
    let site = state.site.borrow().clone();
    ipxe(client_boot_file(
        &site,
        &state.store,
        &state.recorder,
        mac,
        peer,
        Script::Ipxe,
    ))
}

/// Which boot file a client asked for: its iPXE script or its GRUB config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    Ipxe,
    Grub,
}

/// A client's iPXE script or GRUB config from the site's boot decision (both say the same:
/// image, version, sha256, machine-id, command line), or the refusal that says why not; the
/// recorder learns which version it got.
pub fn client_boot_file(
    site: &Site,
    store: &Store,
    recorder: &Recorder,
    mac: Mac,
    peer: Option<IpAddr>,
    kind: Script,
) -> String {
    let refusal = |reason: &str| match kind {
        Script::Ipxe => script::refusal_script(mac, reason),
        Script::Grub => grub::refusal(mac, reason),
    };
    let Some((spec, image)) = site
        .boot_spec(&Machine::ipxe(mac))
        .and_then(|spec| Some((spec.clone(), spec.image?)))
    else {
        tracing::info!(%mac, "not booting: unknown client (unknown_clients = \"ignore\") or no image");
        return refusal("this client is not configured to boot here");
    };
    let manifest = match store.current(&image) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(%mac, %image, error = %e, "no image to boot");
            return refusal(&format!("image {image} is not in the store"));
        }
    };
    let params = ScriptParams {
        http_authority: &site.http_authority,
        tftp_authority: &site.tftp_authority,
        protocol: site.image_protocol,
        mac,
        boot: &spec,
        image: ImageRef {
            name: &manifest.name,
            version: &manifest.version,
            squashfs_sha256: &manifest.squashfs().sha256,
            boot_cpio: manifest.has_boot_cpio(),
        },
    };
    let body = match kind {
        Script::Ipxe => {
            tracing::info!(%mac, image = %manifest.name, version = %manifest.version, "iPXE script");
            script::ipxe_script(&params)
        }
        Script::Grub => {
            tracing::info!(%mac, image = %manifest.name, version = %manifest.version, "GRUB config");
            grub::client_config(&params)
        }
    };
    // A Secure Boot client's shim refuses an unsigned kernel after GRUB, with nothing on the
    // server's side: the record says so, for the dashboard and `diskless clients`.
    let secure_boot = matches!(kind, Script::Grub);
    let kernel_signed = secure_boot
        .then(|| store.kernel_signed(&manifest.name, &manifest.version).ok())
        .flatten();
    recorder.record(BootEvent::Script {
        mac,
        client: peer,
        hostname: spec.hostname.clone(),
        image: manifest.name.clone(),
        version: manifest.version.clone(),
        secure_boot,
        kernel_signed,
    });
    body
}

fn ipxe(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn image_file(
    state: &HttpState,
    image: String,
    version: String,
    file: ImageFile,
    client: Option<IpAddr>,
    request: Request,
) -> Response {
    let range = request
        .headers()
        .get(header::RANGE)
        .and_then(|r| r.to_str().ok())
        .unwrap_or("whole file")
        .to_string();
    // Which version each client really fetched, file by file: what a sysadmin checks after
    // publishing or rolling back while machines boot.
    tracing::info!(?client, name = %image, %version, %file, %range, "http: sending");
    let path = state.store.version_dir(&image, &version).join(file.name());
    // A version's files never change (the store publishes a new version instead), so their
    // manifest hash is a strong validator for a year-long cache.
    let etag = match state.store.manifest(&image, &version) {
        Ok(manifest) => manifest
            .files
            .get(file.name())
            .map(|f| format!("\"{}\"", f.sha256)),
        Err(_) => None,
    };
    let Some(etag) = etag else {
        return text(StatusCode::NOT_FOUND, "not found\n".into());
    };
    // A HEAD is answered with the length but sends nothing.
    let sends_body = request.method() != axum::http::Method::HEAD;
    let response = serve_immutable(path, &etag, request).await;
    if response.status().is_success() && sends_body {
        let bytes = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        state.recorder.record(BootEvent::HttpFile {
            client,
            image,
            version,
            file,
            bytes,
        });
    }
    response
}

/// `Cache-Control` of an immutable file (a stored version's).
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Serves a file that never changes, whose strong validator is `etag` (quoted). tower-http's
/// `ServeFile` does `Range` (one range, 416 otherwise) and Last-Modified preconditions but
/// knows no ETag: `If-None-Match` (weak comparison, RFC 9110 13.1.2) and `If-Range` (strong
/// comparison, 13.1.5; a date or another tag gets the whole file) are answered here.
async fn serve_immutable(path: PathBuf, etag: &str, mut request: Request) -> Response {
    let headers = request.headers_mut();
    let none_match: Vec<String> = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/").to_owned())
        .collect();
    let mut response = if none_match.iter().any(|t| t == "*" || t == etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        if !none_match.is_empty() {
            // If-None-Match overrides If-Modified-Since (RFC 9110 13.1.3).
            headers.remove(header::IF_MODIFIED_SINCE);
        }
        if let Some(if_range) = headers.get(header::IF_RANGE) {
            if if_range.as_bytes() != etag.as_bytes() {
                headers.remove(header::RANGE);
            }
        }
        serve_file(path, request).await
    };
    if matches!(
        response.status(),
        StatusCode::OK | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
    ) {
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(etag) {
            headers.insert(header::ETAG, value);
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
        }
    }
    response
}

/// Bytes read from a file at a time (tower-http's default: 64 KiB).
const READ_CHUNK: usize = 256 << 10;

async fn serve_file(path: PathBuf, request: Request) -> Response {
    if !path.is_file() {
        return text(StatusCode::NOT_FOUND, "not found\n".into());
    }
    match ServeFile::new(&path)
        .with_buf_chunk_size(READ_CHUNK)
        .oneshot(request)
        .await
    {
        Ok(response) => response.map(axum::body::Body::new),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading {}: {e}\n", path.display()),
        ),
    }
}

#[derive(serde::Deserialize)]
struct Report {
    stage: String,
    #[serde(default)]
    detail: String,
}

fn report(state: &HttpState, mac: Mac, client: Option<IpAddr>, report: Report) -> Response {
    let stage_ok = !report.stage.is_empty()
        && report.stage.len() <= 32
        && report
            .stage
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !stage_ok {
        return text(
            StatusCode::BAD_REQUEST,
            "stage must be 1-32 of a-z, 0-9, '-'\n".into(),
        );
    }
    let detail: String = report.detail.chars().take(512).collect();
    tracing::info!(%mac, stage = %report.stage, %detail, "client report");
    state.recorder.record(BootEvent::Report {
        mac,
        client,
        stage: report.stage,
        detail,
    });
    text(StatusCode::OK, "ok\n".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::{Limits, RecorderTask};
    use axum::body::Body;
    use diskless_image::manifest::{hash_file, Manifest, BOOT_CPIO, INITRD, KERNEL, SQUASHFS};
    use std::collections::BTreeMap;

    struct Fixture {
        _dir: tempfile::TempDir,
        state: Arc<HttpState>,
        version: String,
        site: watch::Sender<Arc<Site>>,
        _recorder: RecorderTask,
    }

    impl Fixture {
        async fn record(&self, mac: &str) -> Option<crate::recorder::ClientRecord> {
            self.state.recorder.sync().await;
            self.state.recorder.get(mac.parse().unwrap())
        }
    }

    fn fixture(config: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let staging = store.begin("lab").unwrap();
        let mut files = BTreeMap::new();
        for (name, content) in [
            (SQUASHFS, &b"0123456789"[..]),
            (KERNEL, b"kernel"),
            (INITRD, b"initrd"),
            (BOOT_CPIO, b"cpio"),
        ] {
            std::fs::write(staging.dir.join(name), content).unwrap();
            files.insert(
                name.to_string(),
                hash_file(&staging.dir.join(name)).unwrap(),
            );
        }
        let manifest = Manifest {
            name: "lab".into(),
            version: "20260101-000000-abcdef01".into(),
            created: "2026-01-01T00:00:00Z".into(),
            kernel_version: "6.1.0-9-amd64".into(),
            compression: "zstd".into(),
            source: "/src".into(),
            build_seconds: 1.0,
            files,
            changes: vec![],
        };
        store.publish(staging, &manifest).unwrap();
        std::fs::write(dir.path().join("secret"), "do not serve").unwrap();
        let ipxe_dir = dir.path().join("ipxe");
        std::fs::create_dir(&ipxe_dir).unwrap();
        std::fs::write(ipxe_dir.join("ipxe.efi"), "efi").unwrap();
        let (site, site_rx) = watch::channel(Arc::new(Site::for_tests(&format!(
            "http_port = 8080\n{config}"
        ))));
        let (recorder, task) = crate::recorder::Recorder::start(None, Limits::default());
        let state = Arc::new(HttpState {
            site: site_rx,
            store,
            recorder,
            ipxe_dir,
            ipxe_files: vec!["ipxe.efi".into()],
        });
        Fixture {
            _dir: dir,
            state,
            version: manifest.version,
            site,
            _recorder: task,
        }
    }

    async fn call(
        state: &Arc<HttpState>,
        request: axum::http::Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, String) {
        let response = router(state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    fn get(uri: &str) -> axum::http::Request<Body> {
        axum::http::Request::get(uri).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn script_for_a_client_names_the_current_version() {
        let f = fixture("[boot]\nimage = \"lab\"\n");
        let (status, _, body) = call(&f.state, get("/boot/52-54-00-12-34-56.ipxe")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with("#!ipxe\n"), "{body}");
        assert!(
            body.contains(&format!("/images/lab/{}/vmlinuz", f.version)),
            "{body}"
        );
        let sha = f
            .state
            .store
            .current("lab")
            .unwrap()
            .squashfs()
            .sha256
            .clone();
        assert!(body.contains(&format!("diskless.sha256={sha}")), "{body}");
        let record = f.record("52:54:00:12:34:56").await.unwrap();
        assert_eq!(record.stage(), "ipxe-script");
        assert_eq!(record.version.as_deref(), Some(f.version.as_str()));
    }

    #[tokio::test]
    async fn a_secure_boot_client_on_an_unsigned_kernel_is_recorded_so() {
        let f = fixture("[boot]\nimage = \"lab\"\n");
        // Debian's iPXE: a PE image without a signature, as a custom kernel would be.
        let unsigned = std::fs::read("/usr/lib/ipxe/ipxe.efi").unwrap_or_else(|e| {
            panic!("/usr/lib/ipxe/ipxe.efi: {e} (install ipxe: scripts/install-deps)")
        });
        let kernel = f.state.store.version_dir("lab", &f.version).join(KERNEL);
        std::fs::write(&kernel, unsigned).unwrap();
        let site = f.site.borrow().clone();
        let mac = "52:54:00:12:34:56";
        // On the Secure Boot chain the kernel is checked; the same client on iPXE: no check.
        for (kind, expected) in [
            (Script::Grub, (true, Some(false))),
            (Script::Ipxe, (false, None)),
        ] {
            let store = &f.state.store;
            client_boot_file(
                &site,
                store,
                &f.state.recorder,
                mac.parse().unwrap(),
                None,
                kind,
            );
            let record = f.record(mac).await.unwrap();
            assert_eq!((record.secure_boot, record.kernel_signed), expected);
        }
    }

    #[tokio::test]
    async fn ignored_or_imageless_clients_get_a_refusal_script() {
        let f = fixture("[boot]\nimage = \"lab\"\nunknown_clients = \"ignore\"\n");
        let (_, _, body) = call(&f.state, get("/boot/52-54-00-12-34-56.ipxe")).await;
        assert!(
            body.contains("not booting") && body.contains("exit"),
            "{body}"
        );
        let f = fixture("[boot]\nimage = \"missing\"\n");
        let (_, _, body) = call(&f.state, get("/boot/52-54-00-12-34-56.ipxe")).await;
        assert!(body.contains("image missing is not in the store"), "{body}");
        let (status, _, _) = call(&f.state, get("/boot/not-a-mac.ipxe")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn a_reloaded_site_decides_the_next_script() {
        let f = fixture("[boot]\nimage = \"lab\"\n");
        let uri = "/boot/52-54-00-12-34-56.ipxe";
        let (_, _, body) = call(&f.state, get(uri)).await;
        assert!(body.contains("diskless.size=75%"), "{body}");
        // The new site gives this client its own entry: the next request follows it.
        f.site.send_replace(Arc::new(Site::for_tests(
            "http_port = 8080\n[boot]\nimage = \"lab\"\nunknown_clients = \"ignore\"\n\
             [[client]]\nmac = \"52:54:00:12:34:56\"\nsize = \"2G\"\n",
        )));
        let (_, _, body) = call(&f.state, get(uri)).await;
        assert!(body.contains("diskless.size=2G"), "{body}");
        let (_, _, body) = call(&f.state, get("/boot/52-54-00-99-99-99.ipxe")).await;
        assert!(body.contains("not booting"), "{body}");
    }

    #[tokio::test]
    async fn image_files_sent_are_events() {
        let f = fixture("");
        let mut updates = f.state.recorder.subscribe();
        let uri = format!("/images/lab/{}/vmlinuz", f.version);
        let (status, _, _) = call(&f.state, get(&uri)).await;
        assert_eq!(status, StatusCode::OK);
        match updates.recv().await.unwrap() {
            crate::recorder::Recorded::Event(e) => match &*e {
                BootEvent::HttpFile { file, bytes, .. } => {
                    assert_eq!((*file, *bytes), (ImageFile::Kernel, 6))
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        let (status, _, _) = call(
            &f.state,
            axum::http::Request::delete(&uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn image_files_are_served_with_ranges() {
        let f = fixture("");
        let uri = format!("/images/lab/{}/root.squashfs", f.version);
        let (status, headers, body) = call(&f.state, get(&uri)).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "0123456789"));
        assert_eq!(headers[header::CONTENT_LENGTH], "10");
        let request = axum::http::Request::get(&uri)
            .header(header::RANGE, "bytes=4-")
            .body(Body::empty())
            .unwrap();
        let (status, headers, body) = call(&f.state, request).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::PARTIAL_CONTENT, "456789")
        );
        assert_eq!(headers[header::CONTENT_RANGE], "bytes 4-9/10");
    }

    /// GET `uri` with `headers`.
    fn get_with(uri: &str, headers: &[(header::HeaderName, &str)]) -> axum::http::Request<Body> {
        let mut request = axum::http::Request::get(uri);
        for (name, value) in headers {
            request = request.header(name, *value);
        }
        request.body(Body::empty()).unwrap()
    }

    /// The strong ETag the fixture's squashfs must carry: its manifest sha256, quoted.
    fn squashfs_etag(f: &Fixture) -> String {
        let manifest = f.state.store.manifest("lab", &f.version).unwrap();
        format!("\"{}\"", manifest.files[SQUASHFS].sha256)
    }

    #[tokio::test]
    async fn image_files_are_immutable_with_their_hash_as_etag() {
        let f = fixture("");
        let uri = format!("/images/lab/{}/root.squashfs", f.version);
        let etag = squashfs_etag(&f);
        let (status, headers, _) = call(&f.state, get(&uri)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::ETAG], etag.as_str());
        assert_eq!(
            headers[header::CACHE_CONTROL],
            "public, max-age=31536000, immutable"
        );
        // If-None-Match: the same tag (also weak, also in a list, or *) is a 304 with no
        // body; another tag is the file.
        for tag in [
            etag.clone(),
            format!("W/{etag}"),
            format!("\"other\", {etag}"),
            "*".into(),
        ] {
            let request = get_with(&uri, &[(header::IF_NONE_MATCH, &tag)]);
            let (status, headers, body) = call(&f.state, request).await;
            assert_eq!(
                (status, body.as_str()),
                (StatusCode::NOT_MODIFIED, ""),
                "{tag}"
            );
            assert_eq!(headers[header::ETAG], etag.as_str());
        }
        let request = get_with(
            &uri,
            &[
                (header::IF_NONE_MATCH, "\"other\""),
                (header::IF_MODIFIED_SINCE, "Fri, 01 Jan 2100 00:00:00 GMT"),
            ],
        );
        let (status, _, body) = call(&f.state, request).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "0123456789"));
        // The files of another version have their own tag.
        let kernel = format!("/images/lab/{}/vmlinuz", f.version);
        let (status, headers, _) = call(
            &f.state,
            get_with(&kernel, &[(header::IF_NONE_MATCH, &etag)]),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_ne!(headers[header::ETAG], etag.as_str());
    }

    #[tokio::test]
    async fn ranges_follow_if_range_and_refuse_what_is_not_there() {
        let f = fixture("");
        let uri = format!("/images/lab/{}/root.squashfs", f.version);
        let etag = squashfs_etag(&f);
        // If-Range with this file's tag: the range.
        let request = get_with(
            &uri,
            &[(header::RANGE, "bytes=2-4"), (header::IF_RANGE, &etag)],
        );
        let (status, headers, body) = call(&f.state, request).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::PARTIAL_CONTENT, "234")
        );
        assert_eq!(headers[header::CONTENT_RANGE], "bytes 2-4/10");
        assert_eq!(headers[header::ETAG], etag.as_str());
        // Another tag, a weak one (If-Range compares strongly) or a date: the whole file.
        for if_range in [
            "\"0000\"".to_string(),
            format!("W/{etag}"),
            "Fri, 01 Jan 2100 00:00:00 GMT".into(),
        ] {
            let request = get_with(
                &uri,
                &[(header::RANGE, "bytes=2-4"), (header::IF_RANGE, &if_range)],
            );
            let (status, headers, body) = call(&f.state, request).await;
            assert_eq!(
                (status, body.as_str()),
                (StatusCode::OK, "0123456789"),
                "{if_range}"
            );
            assert!(headers.get(header::CONTENT_RANGE).is_none());
        }
        // A range past the end, or several ranges: 416 naming the size.
        for range in ["bytes=10-", "bytes=0-1,4-5"] {
            let request = get_with(&uri, &[(header::RANGE, range)]);
            let (status, headers, _) = call(&f.state, request).await;
            assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
            assert_eq!(headers[header::CONTENT_RANGE], "bytes */10");
        }
        // A suffix range.
        let request = get_with(&uri, &[(header::RANGE, "bytes=-3")]);
        let (status, _, body) = call(&f.state, request).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::PARTIAL_CONTENT, "789")
        );
    }

    #[tokio::test]
    async fn nothing_outside_the_image_files_is_served() {
        let f = fixture("");
        for uri in [
            "/images/lab/current/root.squashfs".to_string(),
            format!("/images/lab/{}/manifest.json", f.version),
            "/images/lab/..%2F..%2F..%2Fsecret/vmlinuz".to_string(),
            "/images/../../secret".to_string(),
            "/images/lab/.staging-1/root.squashfs".to_string(),
            "/ipxe/..%2Fsecret".to_string(),
            "/ipxe/undionly.kpxe".to_string(),
        ] {
            let (status, _, body) = call(&f.state, get(&uri)).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri} was served: {body}");
            assert!(!body.contains("do not serve"));
        }
        let (status, _, body) = call(&f.state, get("/ipxe/ipxe.efi")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "efi"));
    }

    #[tokio::test]
    async fn reports_are_recorded_and_validated() {
        let f = fixture("");
        let post = |mac: &str, body: &str| {
            axum::http::Request::post(format!("/api/report/{mac}"))
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(body.to_string()))
                .unwrap()
        };
        let (status, _, _) = call(
            &f.state,
            post("52-54-00-12-34-56", "stage=fetched&detail=mbps%3D90.1"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let record = f.record("52:54:00:12:34:56").await.unwrap();
        assert_eq!(
            (record.stage(), record.stages[0].detail.as_str()),
            ("fetched", "mbps=90.1")
        );
        let (status, _, _) = call(&f.state, post("52-54-00-12-34-56", "stage=%3Cscript%3E")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _, _) = call(&f.state, post("zz", "stage=x")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        f.state.recorder.sync().await;
        let (status, _, body) = call(&f.state, get("/api/clients")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("\"stage\":\"fetched\""), "{body}");
    }
}
