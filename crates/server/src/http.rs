//! The HTTP side of the boot server: per-client iPXE scripts, image files (with Range, so an
//! interrupted download resumes), iPXE binaries for UEFI HTTP boot, and boot stage reports.
//!
//! One handler reads every request: [`Route::parse`] says which of the server's URLs it is
//! (the table is in [`diskless_boot::routes`]), a `match` answers it. Scripts and GRUB
//! configs are the [`Booter`]'s, from the boot decision of the site current at the time of
//! the request, so a reload applies to the next request, and each carries a new report
//! token ([`crate::tokens`]): a report is accepted only with its boot's token. What clients fetch
//! and report goes to the [`Recorder`] without waiting. With `unknown_clients = "ignore"`
//! every URL but the index first asks [`Access`] whether the peer is a listed client (403
//! when not).

use crate::access::{Access, Protocol};
use crate::booter::{Booter, ChainAnswer};
use crate::recorder::{BootEvent, Recorder};
use crate::shared_json::{busy, JsonLimit, SharedJson};
use crate::tokens::Boots;
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form, Router};
use diskless_boot::accounts::Accounts;
use diskless_boot::grub::ChainFile;
use diskless_boot::routes::{AccountsFile, ImageFile, Route, RouteError, TOKEN_PARAM};
use diskless_boot::{Loader, Mac, Site, Stage};
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
    /// Each client's current boot: report tokens are checked here.
    pub boots: Arc<Boots>,
    /// What each client boots: its script and GRUB config (which issue its boot's token).
    pub booter: Arc<Booter>,
    /// Directory holding the iPXE binaries we serve.
    pub ipxe_dir: PathBuf,
    /// The iPXE binaries that may be fetched.
    pub ipxe_files: Vec<String>,
    /// Who may fetch anything but the index (`unknown_clients = "ignore"`).
    pub access: Access,
    /// `/api/clients` as made for the table's current version, shared by its requests.
    pub clients_json: SharedJson,
    /// JSON requests served at once.
    pub json_limit: JsonLimit,
    /// The multicast sessions (`[multicast]`).
    pub multicast: Arc<crate::multicast::Sessions>,
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
    if !matches!(route, Route::Index) {
        let site = state.site.borrow().clone();
        let path = request.uri().path();
        if let Err(refusal) = state.access.check(&site, peer, Protocol::Http, path) {
            return text(StatusCode::FORBIDDEN, format!("{refusal}\n"));
        }
    }
    let get = matches!(*request.method(), Method::GET | Method::HEAD);
    match route {
        Route::Index if get => text(StatusCode::OK, "diskless boot server\n".into()),
        Route::BootScript(mac) if get => text(
            StatusCode::OK,
            state.booter.boot_file(mac, peer, Loader::Ipxe),
        ),
        Route::Shim | Route::ShimSecondStage | Route::GrubDispatcher | Route::GrubConfig(_)
            if get =>
        {
            // UEFI HTTP Boot fetches shim here, shim then GRUB beside it; GRUB's dispatcher
            // tries the client's config over HTTP before TFTP (diskless_boot::grub).
            let file = ChainFile::of_route(&route).expect("a route of the Secure Boot chain");
            let answer = state.booter.chain_file(file, peer);
            if answer.is_some() {
                let path = request.uri().path();
                tracing::info!(client = ?peer, file = %route, %path, "http: sending");
            }
            match answer {
                Some(ChainAnswer::Text(config)) => text(StatusCode::OK, config),
                Some(ChainAnswer::File(path)) => serve_file(path.into(), request).await,
                None => text(
                    StatusCode::NOT_FOUND,
                    "no client of this server boots the Secure Boot chain\n".into(),
                ),
            }
        }
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
            let token = report_token(request.uri().query()).map(str::to_owned);
            match Form::<Report>::from_request(request, &()).await {
                Ok(Form(r)) => report(&state, mac, peer, token.as_deref(), r),
                Err(rejection) => rejection.into_response(),
            }
        }
        Route::ClientRecords if get => client_records(&state).await,
        Route::Accounts(file) if get => accounts(&state, file),
        Route::MulticastJoin { image, version } if get => {
            multicast_join(&state, &image, &version, peer).await
        }
        Route::MulticastLeave { image, version } if request.method() == Method::POST => {
            let session = request
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("session=")))
                .and_then(|id| u64::from_str_radix(id, 16).ok());
            match session {
                Some(id) if state.multicast.leave(&image, &version, id).await => {
                    text(StatusCode::OK, "ok\n".into())
                }
                Some(_) => text(
                    StatusCode::NOT_FOUND,
                    format!("no such multicast session of {image} {version}\n"),
                ),
                None => text(
                    StatusCode::BAD_REQUEST,
                    "leave needs ?session=HEX, from the join answer\n".into(),
                ),
            }
        }
        Route::MulticastBlocks { image, version } if get => {
            match state.multicast.get(&image, &version).await {
                Some(session) => (
                    [(header::CONTENT_TYPE, "application/octet-stream")],
                    session.digests.as_ref().clone(),
                )
                    .into_response(),
                None => text(
                    StatusCode::NOT_FOUND,
                    format!("no multicast session of {image} {version}: join first\n"),
                ),
            }
        }
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        ),
    }
}

/// A seat joins the multicast session of a stored version (started if none runs): the
/// answer says where and how it is sent (`crate::multicast`).
async fn multicast_join(
    state: &HttpState,
    image: &str,
    version: &str,
    peer: Option<IpAddr>,
) -> Response {
    let site = state.site.borrow().clone();
    let Some(config) = site.multicast_for(diskless_boot::decision::ipv4_of(peer)) else {
        return text(
            StatusCode::NOT_FOUND,
            "multicast is off for this seat ([multicast] or its [subnet.multicast] enabled = false)\n"
                .into(),
        );
    };
    if state.store.manifest(image, version).is_err() {
        return text(
            StatusCode::NOT_FOUND,
            format!("image {image} version {version} is not in the store\n"),
        );
    }
    let path = state
        .store
        .version_dir(image, version)
        .join(ImageFile::Squashfs.name());
    match state
        .multicast
        .join(&config, site.server_ip, image, version, path)
        .await
    {
        Ok(session) => {
            tracing::info!(?peer, image, version, group = %session.group, "multicast: a seat joined");
            text(StatusCode::OK, session.join_answer())
        }
        Err(e) => {
            tracing::error!(image, version, error = %e, "multicast: no session");
            text(StatusCode::SERVICE_UNAVAILABLE, format!("multicast: {e}\n"))
        }
    }
}

/// Every client's [`crate::recorder::ClientRecord`], as JSON made once per change of the
/// table ([`SharedJson`]). (The admin listener's `/api/clients` serves `ClientView`s.)
async fn client_records(state: &HttpState) -> Response {
    let Some(_permit) = state.json_limit.enter() else {
        return busy();
    };
    let table = state.recorder.published();
    let version = table.version;
    state
        .clients_json
        .response(version, move || {
            serde_json::to_vec(&table.records.values().map(|r| &**r).collect::<Vec<_>>())
        })
        .await
}

/// One of the accounts files, made from the server's passwd and group at this request (a user
/// added since the last boot is in it); 404 without `[accounts]`. Shadow is never read.
fn accounts(state: &HttpState, file: AccountsFile) -> Response {
    let site = state.site.borrow().clone();
    let Some(accounts) = &site.accounts else {
        return text(
            StatusCode::NOT_FOUND,
            "no [accounts] in this server's config\n".into(),
        );
    };
    match accounts_file(accounts, file) {
        Ok(body) => text(StatusCode::OK, body),
        Err(path) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the server cannot read its {} ({path})\n", file.name()),
        ),
    }
}

/// The text of `file`, or the path the server could not read.
fn accounts_file(accounts: &Accounts, file: AccountsFile) -> Result<String, String> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).map_err(|e| {
            tracing::warn!(path = %path.display(), error = %e, "cannot read for [accounts]");
            path.display().to_string()
        })
    };
    Ok(match file {
        AccountsFile::Passwd => {
            let (served, skipped) = accounts.passwd(&read(&accounts.passwd)?);
            for s in skipped {
                tracing::warn!(user = %s.name, reason = s.reason, "account not served");
            }
            served
        }
        AccountsFile::Group => accounts.group(&read(&accounts.passwd)?, &read(&accounts.group)?),
        AccountsFile::KnownHosts => {
            let keys = accounts
                .ssh_host_keys
                .iter()
                .map(|path| read(path))
                .collect::<Result<Vec<_>, _>>()?;
            accounts.known_hosts(&keys)
        }
    })
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
    /// Checked by [`Stage::parse`] in [`report`] (a 400 that says the rule, not serde's).
    stage: String,
    #[serde(default)]
    detail: String,
}

/// The token of a report URL's query (`token=BOOTID.HMAC`), if there is one. It is taken as
/// it is: a token has nothing to escape, so an escaped one does not verify.
fn report_token(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(TOKEN_PARAM)?.strip_prefix('='))
}

fn report(
    state: &HttpState,
    mac: Mac,
    client: Option<IpAddr>,
    token: Option<&str>,
    report: Report,
) -> Response {
    let stage = match Stage::parse(&report.stage) {
        Ok(stage) => stage,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let boot = match state.boots.accept(mac, token, &stage) {
        Ok(boot) => boot,
        Err(reason) => {
            tracing::warn!(
                %mac, ?client, %stage, reason = reason.as_str(),
                "refused a stage report: {reason}"
            );
            state.recorder.record(BootEvent::ReportRefused {
                mac,
                client,
                reason,
            });
            return text(StatusCode::FORBIDDEN, format!("report refused: {reason}\n"));
        }
    };
    let detail: String = report.detail.chars().take(512).collect();
    tracing::info!(%mac, %stage, %detail, %boot, "client report");
    state.recorder.record(BootEvent::Report {
        mac,
        client,
        stage,
        detail,
        boot,
    });
    text(StatusCode::OK, "ok\n".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::{Limits, RecorderTask};
    use axum::body::Body;
    use diskless_image::manifest::{KERNEL, SQUASHFS};

    struct Fixture {
        _dir: tempfile::TempDir,
        state: Arc<HttpState>,
        version: String,
        site: watch::Sender<Arc<Site>>,
        _recorder: RecorderTask,
    }

    impl Fixture {
        fn record(&self, mac: &str) -> Option<Arc<crate::recorder::ClientRecord>> {
            self.state.recorder.get(mac.parse().unwrap())
        }
    }

    fn fixture(config: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (store, version) = crate::booter::tests::store_with_lab(dir.path());
        std::fs::write(dir.path().join("secret"), "do not serve").unwrap();
        let ipxe_dir = dir.path().join("ipxe");
        std::fs::create_dir(&ipxe_dir).unwrap();
        std::fs::write(ipxe_dir.join("ipxe.efi"), "efi").unwrap();
        // Its own state directory: the access check reads the leases there (full mode).
        let (site, site_rx) = watch::channel(Arc::new(Site::for_tests(&format!(
            "http_port = 8080\nstate = {:?}\n{config}",
            dir.path().join("state")
        ))));
        let (recorder, task) = crate::recorder::Recorder::start(None, Limits::default());
        let boots = Arc::new(Boots::new(
            crate::tokens::ReportKey::from_bytes([3; crate::tokens::KEY_LEN]),
            recorder.clone(),
        ));
        // The neighbour table the access check reads: LISTED and STRANGER on the site's link.
        let arp_table = dir.path().join("arp");
        std::fs::write(
            &arp_table,
            format!(
                "IP address HW type Flags HW address Mask Device\n\
                 {LISTED} 0x1 0x2 52:54:00:12:34:56 * eth0\n\
                 {STRANGER} 0x1 0x2 52:54:00:99:99:99 * eth0\n"
            ),
        )
        .unwrap();
        let access = Access {
            arp_table,
            metrics: Arc::new(crate::metrics::Metrics::new()),
        };
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
            ipxe_dir,
            ipxe_files: vec!["ipxe.efi".into()],
            access,
            clients_json: SharedJson::default(),
            json_limit: JsonLimit::default(),
            multicast: Default::default(),
        });
        Fixture {
            _dir: dir,
            state,
            version,
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
        let body = axum::body::to_bytes(response.into_body(), 16 << 20)
            .await
            .unwrap();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    fn get(uri: &str) -> axum::http::Request<Body> {
        axum::http::Request::get(uri).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn multicast_joins_are_refused_when_off_or_for_a_version_not_stored() {
        let off = fixture("");
        let join = format!("/api/multicast/lab/{}/join", off.version);
        let (status, _, body) = call(&off.state, get(&join)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("multicast is off for this seat"), "{body}");
        let on = fixture("[multicast]\nenabled = true\n");
        let (status, _, body) = call(&on.state, get("/api/multicast/lab/v9/join")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("version v9 is not in the store"), "{body}");
        let blocks = format!("/api/multicast/lab/{}/blocks", on.version);
        let (status, _, body) = call(&on.state, get(&blocks)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("join first"), "{body}");
    }

    /// The address of 52:54:00:12:34:56 in the fixture's neighbour table.
    const LISTED: &str = "10.0.0.51";
    /// The address of 52:54:00:99:99:99.
    const STRANGER: &str = "10.0.0.99";

    /// `request` as if it came from `ip` (what axum's connect info says in the server).
    fn from(ip: &str, mut request: axum::http::Request<Body>) -> axum::http::Request<Body> {
        let addr = SocketAddr::new(ip.parse().unwrap(), 40000);
        request.extensions_mut().insert(ConnectInfo(addr));
        request
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
        let record = f.record("52:54:00:12:34:56").unwrap();
        assert_eq!(record.stage(), "ipxe-script");
        assert_eq!(record.version.as_deref(), Some(f.version.as_str()));
    }

    /// Issue 25: an image with a dm-verity tree is booted through it (its root hash and layout
    /// on the command line); one built before the tree is not.
    #[tokio::test]
    async fn a_script_carries_the_root_hash_of_an_image_with_a_hash_tree() {
        let f = fixture("[boot]\nimage = \"lab\"\n");
        let script = "/boot/52-54-00-12-34-56.ipxe";
        let (_, _, body) = call(&f.state, get(script)).await;
        assert!(!body.contains("diskless.roothash="), "{body}");
        let mut manifest = f.state.store.current("lab").unwrap();
        manifest.verity = Some(diskless_image::verity::Verity {
            format: 1,
            hash_algorithm: "sha256".into(),
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: 7,
            hash_offset: 7 * 4096,
            root_hash: "5a".repeat(32),
            salt: "a5".repeat(32),
        });
        let dir = f.state.store.version_dir("lab", &f.version);
        manifest
            .save(&dir.join(diskless_image::manifest::MANIFEST))
            .unwrap();
        let (status, _, body) = call(&f.state, get(script)).await;
        assert_eq!(status, StatusCode::OK);
        let root = "5a".repeat(32);
        let layout = format!("7:{}", "a5".repeat(32));
        assert!(
            body.contains(&format!(
                " diskless.roothash={root} diskless.verity={layout}"
            )),
            "{body}"
        );
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
        let mac = "52:54:00:12:34:56";
        // On the Secure Boot chain the kernel is checked; the same client on iPXE: no check.
        for (loader, expected, stage) in [
            (Loader::ShimGrub, (true, Some(false)), Stage::GrubConfig),
            (Loader::Ipxe, (false, None), Stage::IpxeScript),
        ] {
            f.state.booter.boot_file(mac.parse().unwrap(), None, loader);
            let record = f.record(mac).unwrap();
            assert_eq!((record.secure_boot, record.kernel_signed), expected);
            assert_eq!(
                record.last_stage(),
                Some(&stage),
                "GRUB configs are not iPXE scripts"
            );
        }
    }

    #[tokio::test]
    async fn grub_configs_are_answered_over_http_as_over_tftp() {
        let f = fixture("[boot]\nimage = \"lab\"\nsecure_boot = true\n");
        // The path GRUB's dispatcher sources over (http,SERVER) first.
        let uri = "/grub/clients/52:54:00:12:34:56.cfg";
        let (status, _, body) = call(&f.state, get(uri)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            body.starts_with(&format!(
                "# diskless: 52:54:00:12:34:56 boots image lab version {}\n",
                f.version
            )),
            "{body}"
        );
        let record = f.record("52:54:00:12:34:56").unwrap();
        assert_eq!(record.last_stage(), Some(&Stage::GrubConfig));
        let (status, _, body) = call(&f.state, get("/grub/grub.cfg")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("${net_default_mac}.cfg"), "{body}");
        // No client on the Secure Boot chain: no chain, as over TFTP.
        let plain = fixture("[boot]\nimage = \"lab\"\n");
        for uri in [uri, "/grub/grub.cfg"] {
            let (status, _, _) = call(&plain.state, get(uri)).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        }
        let (status, _, _) = call(&f.state, get("/grub/clients/nobody.cfg")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn shim_and_its_grub_are_served_at_the_root_for_uefi_http_boot() {
        use diskless_boot::grub::{GRUBNET_SIGNED, SHIM_SIGNED};
        let f = fixture("[boot]\nimage = \"lab\"\nsecure_boot = true\n");
        // The URL DHCP gives an HTTP Boot client, and the one shim's httpboot.c makes of it
        // (`//grubx64.efi`: diskless_boot::grub): answered 200 with a Content-Length, which
        // shim needs. (scripts/install-deps installs shim-signed and grub-efi-amd64-signed.)
        for (uri, path) in [
            ("/shimx64.efi", SHIM_SIGNED),
            ("//grubx64.efi", GRUBNET_SIGNED),
            ("/grubx64.efi", GRUBNET_SIGNED),
        ] {
            let (status, headers, _) = call(&f.state, get(uri)).await;
            assert_eq!(status, StatusCode::OK, "{uri}");
            let size = std::fs::metadata(path).unwrap().len().to_string();
            assert_eq!(
                headers
                    .get(header::CONTENT_LENGTH)
                    .map(|v| v.to_str().unwrap()),
                Some(size.as_str()),
                "{uri}"
            );
        }
        let plain = fixture("[boot]\nimage = \"lab\"\n");
        for uri in ["/shimx64.efi", "/grubx64.efi"] {
            let (status, _, body) = call(&plain.state, get(uri)).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {body}");
        }
    }

    #[tokio::test]
    async fn ignored_or_imageless_clients_get_a_refusal_script() {
        // A listed machine asking for the script of one that is not.
        let f = fixture(
            "[boot]\nimage = \"lab\"\nunknown_clients = \"ignore\"\n\
             [[client]]\nmac = \"52:54:00:12:34:56\"\n",
        );
        let (_, _, body) = call(&f.state, from(LISTED, get("/boot/52-54-00-99-99-99.ipxe"))).await;
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
        let (_, _, body) = call(&f.state, from(LISTED, get(uri))).await;
        assert!(body.contains("diskless.size=2G"), "{body}");
        let other = get("/boot/52-54-00-99-99-99.ipxe");
        let (_, _, body) = call(&f.state, from(LISTED, other)).await;
        assert!(body.contains("not booting"), "{body}");
    }

    #[tokio::test]
    async fn the_script_lists_the_image_urls_of_the_peers_subnet() {
        let f = fixture(
            "[boot]\nimage = \"lab\"\nimage_urls = [\"http://origin\"]\n\
             [[subnet]]\ncidr = \"10.1.4.0/24\"\nimage_urls = [\"http://cache-room4\"]\n",
        );
        let script = |peer: &str| from(peer, get("/boot/52-54-00-12-34-56.ipxe"));
        let image = |body: &str| {
            body.split_whitespace()
                .find_map(|w| w.strip_prefix("diskless.image="))
                .unwrap()
                .split(',')
                .map(|u| u.split("/images/").next().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        let (_, _, body) = call(&f.state, script("10.1.4.23")).await;
        assert_eq!(image(&body), ["http://cache-room4", "http://10.0.0.1:8080"]);
        assert!(
            body.contains(&format!(
                "kernel http://cache-room4/images/lab/{}/vmlinuz ",
                f.version
            )),
            "{body}"
        );
        let (_, _, body) = call(&f.state, script("10.1.5.23")).await;
        assert_eq!(image(&body), ["http://origin", "http://10.0.0.1:8080"]);
    }

    /// `[subnet.multicast] enabled = false`: that subnet's seats are not sent to a session
    /// (no `diskless.multicast=` in their script) and may not join one; the others may.
    #[tokio::test]
    async fn multicast_follows_the_peers_subnet() {
        let f = fixture(
            "[boot]\nimage = \"lab\"\n[multicast]\nenabled = true\n\
             [[subnet]]\ncidr = \"10.1.4.0/24\"\nimage_urls = []\n\
             [subnet.multicast]\nenabled = false\n",
        );
        let script = |peer: &str| from(peer, get("/boot/52-54-00-12-34-56.ipxe"));
        let (_, _, body) = call(&f.state, script("10.1.4.23")).await;
        assert!(!body.contains("diskless.multicast="), "{body}");
        let (_, _, body) = call(&f.state, script("10.1.5.23")).await;
        assert!(body.contains("diskless.multicast="), "{body}");
        let join = format!("/api/multicast/lab/{}/join", f.version);
        let (status, _, body) = call(&f.state, from("10.1.4.23", get(&join))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert!(body.contains("multicast is off for this seat"), "{body}");
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

    /// The report URL path (with its token) of the script `body`.
    fn report_path(body: &str) -> String {
        let url = body
            .split_whitespace()
            .find_map(|w| w.strip_prefix("diskless.report="))
            .unwrap_or_else(|| panic!("no report URL in {body}"));
        let path = &url[url.find("/api/").unwrap()..];
        assert!(path.contains("?token="), "{path}");
        path.to_string()
    }

    fn post(path: &str, body: &str) -> axum::http::Request<Body> {
        axum::http::Request::post(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    /// The report refusals the recorder was told of since `updates` subscribed.
    fn refusals(
        updates: &mut tokio::sync::broadcast::Receiver<crate::recorder::Recorded>,
    ) -> Vec<(Mac, crate::tokens::Refusal)> {
        let mut got = Vec::new();
        while let Ok(update) = updates.try_recv() {
            if let crate::recorder::Recorded::Event(e) = update {
                if let BootEvent::ReportRefused { mac, reason, .. } = &*e {
                    got.push((*mac, *reason));
                }
            }
        }
        got
    }

    #[tokio::test]
    async fn accounts_are_served_without_passwords_and_only_when_configured() {
        let f = fixture("");
        let (status, _, _) = call(&f.state, get("/accounts/passwd")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "no [accounts], no accounts");
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let passwd = file(
            "passwd",
            "root:x:0:0:root:/root:/bin/bash\nalice:$y$hash:1000:1000::/home/alice:/bin/bash\n",
        );
        let group = file("group", "root:x:0:\nalice:x:1000:\n");
        let key = file("key.pub", "ssh-ed25519 AAAAkey root@server\n");
        let f = fixture(&format!(
            "[boot]\nimage = \"lab\"\n[accounts]\npasswd = \"{passwd}\"\ngroup = \"{group}\"\nssh_host_keys = [\"{key}\"]\n"
        ));
        let (status, _, body) = call(&f.state, get("/accounts/passwd")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "alice:x:1000:1000::/home/alice:/bin/bash\n");
        let (_, _, body) = call(&f.state, get("/accounts/group")).await;
        assert_eq!(body, "alice:x:1000:\n");
        let (_, _, body) = call(&f.state, get("/accounts/ssh_known_hosts")).await;
        assert_eq!(body, "10.0.0.1 ssh-ed25519 AAAAkey\n");
        let (status, _, _) = call(&f.state, get("/accounts/shadow")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let script = call(&f.state, get("/boot/52-54-00-12-34-56.ipxe")).await.2;
        assert!(
            script.contains(
                " diskless.accounts=http://10.0.0.1:8080/accounts diskless.sshfs=10.0.0.1:22"
            ),
            "{script}"
        );
    }

    #[tokio::test]
    async fn reports_are_recorded_and_validated() {
        let f = fixture("[boot]\nimage = \"lab\"\n");
        let (_, _, script) = call(&f.state, get("/boot/52-54-00-12-34-56.ipxe")).await;
        let path = report_path(&script);
        let (status, _, _) = call(&f.state, post(&path, "stage=fetched&detail=mbps%3D90.1")).await;
        assert_eq!(status, StatusCode::OK);
        let record = f.record("52:54:00:12:34:56").unwrap();
        assert_eq!(
            (record.stage(), record.stages[1].detail.as_str()),
            ("fetched", "mbps=90.1")
        );
        let boot = record.boot.clone().expect("the boot is in the record");
        assert_eq!(boot.reported, [Stage::Fetched]);
        assert_eq!(Some(boot), f.state.boots.current(record.mac));
        let (status, _, _) = call(&f.state, post(&path, "stage=%3Cscript%3E")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _, _) = call(&f.state, post("/api/report/zz", "stage=x")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _, body) = call(&f.state, get("/api/clients")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("\"stage\":\"fetched\""), "{body}");
        // A stage no one here knows is kept as it was sent (the metrics count it as other).
        let long = "a".repeat(diskless_boot::stage::OTHER_MAX + 1);
        let (status, _, _) = call(&f.state, post(&path, &format!("stage={long}"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _, _) = call(&f.state, post(&path, "stage=made-up")).await;
        assert_eq!(status, StatusCode::OK);
        let record = f.record("52:54:00:12:34:56").unwrap();
        assert_eq!(record.stage(), "made-up");
        assert_eq!(record.last_stage().map(Stage::label), Some("other"));
    }

    #[tokio::test]
    async fn the_client_table_is_serialized_once_per_change() {
        let f = fixture("[boot]\nimage = \"lab\"\n");
        let (_, _, script) = call(&f.state, get("/boot/52-54-00-12-34-56.ipxe")).await;
        let (_, _, first) = call(&f.state, get("/api/clients")).await;
        let (_, _, second) = call(&f.state, get("/api/clients")).await;
        assert!(first.contains("ipxe-script"), "{first}");
        assert_eq!(
            (first.as_str(), f.state.clients_json.made()),
            (second.as_str(), 1)
        );
        let (status, _, _) = call(&f.state, post(&report_path(&script), "stage=fetched")).await;
        assert_eq!(status, StatusCode::OK);
        let (_, _, third) = call(&f.state, get("/api/clients")).await;
        assert!(third.contains("\"fetched\""), "{third}");
        assert_eq!(f.state.clients_json.made(), 2);
    }

    #[tokio::test]
    async fn the_client_table_refuses_one_request_more_than_the_limit() {
        let f = fixture("[boot]\nimage = \"lab\"\n");
        let held: Vec<_> = (0..crate::shared_json::JSON_CONCURRENCY)
            .map(|_| f.state.json_limit.enter().unwrap())
            .collect();
        let (status, headers, _) = call(&f.state, get("/api/clients")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "1");
        // Scripts and images are not behind it.
        let (status, _, _) = call(&f.state, get("/boot/52-54-00-12-34-56.ipxe")).await;
        assert_eq!(status, StatusCode::OK);
        drop(held);
        let (status, _, _) = call(&f.state, get("/api/clients")).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn ignoring_unknown_clients_closes_every_url_but_the_index_to_them() {
        let f = fixture(
            "[boot]\nimage = \"lab\"\nunknown_clients = \"ignore\"\n\
             [[client]]\nmac = \"52:54:00:12:34:56\"\n",
        );
        let image = format!("/images/lab/{}/vmlinuz", f.version);
        let requests = || {
            [
                get("/boot/52-54-00-12-34-56.ipxe"),
                get(&image),
                get("/ipxe/ipxe.efi"),
                get("/api/clients"),
            ]
        };
        // The listed client gets everything, and its report (with the token of the script it
        // was just given) is taken.
        let mut script = String::new();
        for request in requests() {
            let uri = request.uri().clone();
            let (status, _, body) = call(&f.state, from(LISTED, request)).await;
            assert_eq!(status, StatusCode::OK, "{uri}: {body}");
            if script.is_empty() {
                script = body;
            }
        }
        let report_path = report_path(&script);
        let (status, _, body) =
            call(&f.state, from(LISTED, post(&report_path, "stage=fetched"))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let requests = || {
            let [a, b, c, d] = requests();
            [a, b, c, d, post(&report_path, "stage=multi-user")]
        };
        // A stranger on the link, or a peer whose MAC the server cannot tell, gets 403 for
        // each, even asking in a listed client's name.
        for peer in [Some(STRANGER), Some("10.0.0.77"), None] {
            for request in requests() {
                let uri = request.uri().clone();
                let request = match peer {
                    Some(ip) => from(ip, request),
                    None => request,
                };
                let (status, _, body) = call(&f.state, request).await;
                assert_eq!(status, StatusCode::FORBIDDEN, "{peer:?} {uri}: {body}");
            }
        }
        let (status, _, _) = call(&f.state, from(STRANGER, get("/"))).await;
        assert_eq!(status, StatusCode::OK, "the index says what the server is");
        let metrics = f.state.access.metrics.render();
        assert!(
            metrics.contains("diskless_access_refused_total{protocol=\"http\"} 15"),
            "{metrics}"
        );
        // The stranger's report left no record.
        assert!(f.record("52:54:00:99:99:99").is_none());
        // Full mode: an address the neighbour table lacks is the listed client's when the
        // server leased it to that client.
        let site = f.state.site.borrow().clone();
        let mut leases = diskless_dhcp::lease::LeaseStore::new();
        leases.insert(diskless_dhcp::lease::Lease {
            mac: "52:54:00:12:34:56".parse().unwrap(),
            ip: "10.0.0.77".parse().unwrap(),
            expires: u64::MAX,
            state: diskless_dhcp::lease::LeaseState::Bound,
            hostname: None,
        });
        std::fs::create_dir_all(&site.state).unwrap();
        leases.save(&site.state.join("leases.json")).unwrap();
        let (status, _, body) = call(&f.state, from("10.0.0.77", get(&image))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    #[tokio::test]
    async fn forged_and_replayed_reports_are_refused_and_told() {
        let f = fixture("[boot]\nimage = \"lab\"\n");
        let mut updates = f.state.recorder.subscribe();
        let a: Mac = "52:54:00:00:00:0a".parse().unwrap();
        let (_, _, script) = call(&f.state, get("/boot/52-54-00-00-00-0a.ipxe")).await;
        let first = report_path(&script);
        let (_, _, script) = call(&f.state, get("/boot/52-54-00-00-00-0b.ipxe")).await;
        let b_path = report_path(&script);
        let token = first.split_once("?token=").unwrap().1.to_string();
        let a_path = |token: &str| format!("/api/report/52-54-00-00-00-0a?token={token}");
        let mut flipped = token.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        let b_token = b_path.split_once("?token=").unwrap().1;
        use crate::tokens::Refusal::*;
        for (path, reason) in [
            ("/api/report/52-54-00-00-00-0a".to_string(), Missing),
            (a_path(""), Forged),
            (a_path(&flipped), Forged),
            (a_path(&token[..token.len() - 2]), Forged),
            (
                a_path(&format!("{}.{}", &token[..16], "0".repeat(64))),
                Forged,
            ),
            // B's genuine token on A's report.
            (a_path(b_token), Forged),
        ] {
            let (status, _, body) = call(&f.state, post(&path, "stage=multi-user")).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
            assert_eq!(body, format!("report refused: {reason}\n"), "{path}");
        }
        // The genuine token: once per stage.
        let (status, _, _) = call(&f.state, post(&first, "stage=network-up")).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, _) = call(&f.state, post(&first, "stage=network-up&detail=again")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        // A's next boot: the first boot's token is a replay now.
        let (_, _, script) = call(&f.state, get("/boot/52-54-00-00-00-0a.ipxe")).await;
        let second = report_path(&script);
        assert_ne!(second, first);
        let (status, _, _) = call(&f.state, post(&first, "stage=fetched")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _, _) = call(&f.state, post(&second, "stage=fetched")).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, _) = call(&f.state, post(&b_path, "stage=fetched")).await;
        assert_eq!(status, StatusCode::OK);
        let refused = refusals(&mut updates);
        assert_eq!(
            refused,
            [
                (a, Missing),
                (a, Forged),
                (a, Forged),
                (a, Forged),
                (a, Forged),
                (a, Forged),
                (a, Replayed),
                (a, Replayed)
            ]
        );
        // Only the accepted reports are stages.
        let stages = |r: Arc<crate::recorder::ClientRecord>| -> Vec<String> {
            r.stages.iter().map(|s| s.stage.to_string()).collect()
        };
        assert_eq!(
            stages(f.record("52:54:00:00:00:0a").unwrap()),
            ["ipxe-script", "network-up", "ipxe-script", "fetched"]
        );
        assert_eq!(
            stages(f.record("52:54:00:00:00:0b").unwrap()),
            ["ipxe-script", "fetched"]
        );
    }
}
