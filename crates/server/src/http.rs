//! The HTTP side of the boot server: per-client iPXE scripts, image files (with Range, so an
//! interrupted download resumes), iPXE binaries for UEFI HTTP boot, and boot stage reports.
//!
//! One handler reads every request: [`Route::parse`] says which of the server's URLs it is
//! (the table is in [`diskless_boot::routes`]), a `match` answers it. Scripts come from the
//! boot decision of the site current at the time of the request ([`Site::boot_spec`]), so a
//! reload applies to the next request, and each carries a new report token
//! ([`crate::tokens`]): a report is accepted only with its boot's token. What clients fetch
//! and report goes to the [`Recorder`] without waiting. With `unknown_clients = "ignore"`
//! every URL but the index first asks [`Access`] whether the peer is a listed client (403
//! when not).

use crate::access::{Access, Protocol};
use crate::recorder::{BootEvent, Recorder};
use crate::shared_json::{busy, JsonLimit, SharedJson};
use crate::tokens::Boots;
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form, Router};
use diskless_boot::accounts::Accounts;
use diskless_boot::grub;
use diskless_boot::routes::{AccountsFile, ImageFile, Route, RouteError, TOKEN_PARAM};
use diskless_boot::script::{self, ImageRef, ScriptParams};
use diskless_boot::{Mac, Machine, Site, Stage};
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
    /// Each client's current boot: report tokens are issued and checked here.
    pub boots: Arc<Boots>,
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
            let token = report_token(request.uri().query()).map(str::to_owned);
            match Form::<Report>::from_request(request, &()).await {
                Ok(Form(r)) => report(&state, mac, peer, token.as_deref(), r),
                Err(rejection) => rejection.into_response(),
            }
        }
        Route::Clients if get => clients(&state).await,
        Route::Accounts(file) if get => accounts(&state, file),
        Route::GrubConfig(mac) if get => grub_config(&state, mac, peer),
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        ),
    }
}

/// Every client's record, as JSON made once per change of the table ([`SharedJson`]).
async fn clients(state: &HttpState) -> Response {
    let Some(_permit) = state.json_limit.enter() else {
        return busy();
    };
    let table = state.recorder.published();
    let version = table.version;
    state
        .clients_json
        .response(version, move || {
            serde_json::to_vec(&table.records.values().collect::<Vec<_>>())
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

fn boot_script(state: &HttpState, mac: Mac, peer: Option<IpAddr>) -> Response {
    let site = state.site.borrow().clone();
    ipxe(client_boot_file(
        &site,
        &state.store,
        &state.recorder,
        &state.boots,
        mac,
        peer,
        Script::Ipxe,
    ))
}

/// A client's GRUB config over HTTP, as over TFTP (`crate::secure_boot_file`): a GRUB with
/// http (Debian 13's signed network image) gets it here first, then the kernel and initrds
/// over HTTP. Without it, such a GRUB got a 404 and retried four times, waiting for the
/// connection to close each time (2 min 15 s under TCG, seen with tcpdump), before it fell
/// back to TFTP. Not found when no client boots the Secure Boot chain, as over TFTP.
fn grub_config(state: &HttpState, mac: Mac, peer: Option<IpAddr>) -> Response {
    let site = state.site.borrow().clone();
    if !crate::secure_boot_used(&site) {
        return text(
            StatusCode::NOT_FOUND,
            "no client boots the Secure Boot chain\n".into(),
        );
    }
    text(
        StatusCode::OK,
        client_boot_file(
            &site,
            &state.store,
            &state.recorder,
            &state.boots,
            mac,
            peer,
            Script::Grub,
        ),
    )
}

/// Which boot file a client asked for: its iPXE script or its GRUB config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    Ipxe,
    Grub,
}

/// A client's iPXE script or GRUB config from the site's boot decision (both say the same:
/// image, version, sha256, machine-id, command line), or the refusal that says why not. Each
/// one starts a new boot of the client, with a new report token; the recorder learns which
/// version and boot it got.
pub fn client_boot_file(
    site: &Site,
    store: &Store,
    recorder: &Recorder,
    boots: &Boots,
    mac: Mac,
    peer: Option<IpAddr>,
    kind: Script,
) -> String {
    let refusal = |reason: &str| match kind {
        Script::Ipxe => script::refusal_script(mac, reason),
        Script::Grub => grub::refusal(mac, reason),
    };
    let Some((spec, image)) = site
        .boot_spec(&Machine::ipxe(mac, peer))
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
    let token = boots.issue(mac);
    let report_token = token.to_string();
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
        report_token: &report_token,
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
        boot: token.boot,
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
    use diskless_image::manifest::{BOOT_CPIO, INITRD, KERNEL, SQUASHFS};

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
        let files: [(&str, &[u8]); 4] = [
            (SQUASHFS, b"0123456789"),
            (KERNEL, b"kernel"),
            (INITRD, b"initrd"),
            (BOOT_CPIO, b"cpio"),
        ];
        let manifest = store
            .publish_files("lab", "20260101-000000-abcdef01", &files)
            .unwrap();
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
        let key = crate::tokens::ReportKey::from_bytes([3; crate::tokens::KEY_LEN]);
        let state = Arc::new(HttpState {
            site: site_rx,
            store,
            recorder,
            boots: Arc::new(Boots::new(key, 100, [])),
            ipxe_dir,
            ipxe_files: vec!["ipxe.efi".into()],
            access,
            clients_json: SharedJson::default(),
            json_limit: JsonLimit::default(),
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
        for (kind, expected, stage) in [
            (Script::Grub, (true, Some(false)), Stage::GrubConfig),
            (Script::Ipxe, (false, None), Stage::IpxeScript),
        ] {
            let store = &f.state.store;
            client_boot_file(
                &site,
                store,
                &f.state.recorder,
                &f.state.boots,
                mac.parse().unwrap(),
                None,
                kind,
            );
            let record = f.record(mac).await.unwrap();
            assert_eq!((record.secure_boot, record.kernel_signed), expected);
            assert_eq!(
                record.last_stage(),
                Some(&stage),
                "GRUB configs are not iPXE scripts"
            );
        }
    }

    #[tokio::test]
    async fn a_grub_with_http_gets_its_config_over_http_with_secure_boot_only() {
        let path = "/grub/clients/52:54:00:12:34:56.cfg";
        let f = fixture("[boot]\nimage = \"lab\"\n");
        let (status, _, _) = call(&f.state, get(path)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "no Secure Boot client");
        let f = fixture("[boot]\nimage = \"lab\"\nsecure_boot = true\n");
        let (status, _, body) = call(&f.state, get(path)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            body.contains(&format!("/images/lab/{}/vmlinuz", f.version)),
            "{body}"
        );
        assert!(body.contains("linux "), "not a GRUB config: {body}");
        let record = f.record("52:54:00:12:34:56").await.unwrap();
        assert_eq!(record.last_stage(), Some(&Stage::GrubConfig));
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
        let record = f.record("52:54:00:12:34:56").await.unwrap();
        assert_eq!(
            (record.stage(), record.stages[1].detail.as_str()),
            ("fetched", "mbps=90.1")
        );
        let boot = record.boot.expect("the boot is in the record");
        assert_eq!(boot.reported, [Stage::Fetched]);
        assert_eq!(Some(boot), f.state.boots.current(record.mac));
        let (status, _, _) = call(&f.state, post(&path, "stage=%3Cscript%3E")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _, _) = call(&f.state, post("/api/report/zz", "stage=x")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        f.state.recorder.sync().await;
        let (status, _, body) = call(&f.state, get("/api/clients")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("\"stage\":\"fetched\""), "{body}");
        // A stage no one here knows is kept as it was sent (the metrics count it as other).
        let long = "a".repeat(diskless_boot::stage::OTHER_MAX + 1);
        let (status, _, _) = call(&f.state, post(&path, &format!("stage={long}"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _, _) = call(&f.state, post(&path, "stage=made-up")).await;
        assert_eq!(status, StatusCode::OK);
        let record = f.record("52:54:00:12:34:56").await.unwrap();
        assert_eq!(record.stage(), "made-up");
        assert_eq!(record.last_stage().map(Stage::label), Some("other"));
    }

    #[tokio::test]
    async fn the_client_table_is_serialized_once_per_change() {
        let f = fixture("[boot]\nimage = \"lab\"\n");
        let (_, _, script) = call(&f.state, get("/boot/52-54-00-12-34-56.ipxe")).await;
        f.state.recorder.sync().await;
        let (_, _, first) = call(&f.state, get("/api/clients")).await;
        let (_, _, second) = call(&f.state, get("/api/clients")).await;
        assert!(first.contains("ipxe-script"), "{first}");
        assert_eq!(
            (first.as_str(), f.state.clients_json.made()),
            (second.as_str(), 1)
        );
        let (status, _, _) = call(&f.state, post(&report_path(&script), "stage=fetched")).await;
        assert_eq!(status, StatusCode::OK);
        f.state.recorder.sync().await;
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
        assert!(f.record("52:54:00:99:99:99").await.is_none());
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
        f.state.recorder.sync().await;
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
        let stages = |r: crate::recorder::ClientRecord| -> Vec<String> {
            r.stages.into_iter().map(|s| s.stage.to_string()).collect()
        };
        assert_eq!(
            stages(f.record("52:54:00:00:00:0a").await.unwrap()),
            ["ipxe-script", "network-up", "ipxe-script", "fetched"]
        );
        assert_eq!(
            stages(f.record("52:54:00:00:00:0b").await.unwrap()),
            ["ipxe-script", "fetched"]
        );
    }
}
