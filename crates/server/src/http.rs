//! The HTTP side of the boot server: per-client iPXE scripts, image files (with Range, so an
//! interrupted download resumes), iPXE binaries for UEFI HTTP boot, and boot stage reports.
//!
//! ```text
//! GET  /boot/{mac}.ipxe                    the client's iPXE script
//! GET  /images/{name}/{version}/{file}     vmlinuz, initrd.img, diskless.cpio, root.squashfs
//! GET  /ipxe/{file}                        iPXE binaries (UEFI HTTP boot)
//! POST /api/report/{mac}                   stage=...&detail=... from the client
//! GET  /api/clients                        the boot record of every client, as JSON
//! ```

use crate::clients::{Clients, Update};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Json, Router};
use diskless_boot::config::ImageProtocol;
use diskless_boot::script::{self, ImageRef, ScriptParams};
use diskless_boot::{Mac, Policy};
use diskless_image::manifest::{BOOT_CPIO, INITRD, KERNEL, SQUASHFS};
use diskless_image::store::{validate_name, Store};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tower::ServiceExt;
use tower_http::services::ServeFile;

/// What the HTTP handlers share.
pub struct HttpState {
    pub store: Store,
    pub policy: Policy,
    pub clients: Arc<Clients>,
    /// `10.0.0.1` or `10.0.0.1:8080`: how clients reach this server.
    pub http_authority: String,
    pub tftp_authority: String,
    pub protocol: ImageProtocol,
    /// Directory holding the iPXE binaries we serve.
    pub ipxe_dir: PathBuf,
    /// The iPXE binaries that may be fetched.
    pub ipxe_files: Vec<String>,
}

pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/", get(|| async { "diskless boot server\n" }))
        .route("/boot/{file}", get(boot_script))
        .route("/images/{name}/{version}/{file}", get(image_file))
        .route("/ipxe/{file}", get(ipxe_file))
        .route("/api/report/{mac}", post(report))
        .route("/api/clients", get(clients))
        .with_state(state)
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn peer(connect: &Option<Extension<ConnectInfo<SocketAddr>>>) -> Option<std::net::IpAddr> {
    connect
        .as_ref()
        .map(|Extension(ConnectInfo(addr))| addr.ip())
}

async fn boot_script(
    State(state): State<Arc<HttpState>>,
    Path(file): Path<String>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Response {
    let Some(mac) = file
        .strip_suffix(".ipxe")
        .and_then(|m| m.parse::<Mac>().ok())
    else {
        return text(
            StatusCode::NOT_FOUND,
            format!("{file}: expected /boot/aa-bb-cc-dd-ee-ff.ipxe\n"),
        );
    };
    let Some(boot) = state.policy.for_client(mac) else {
        tracing::info!(%mac, "not booting: unknown client (unknown_clients = \"ignore\") or no image");
        return ipxe(script::refusal_script(
            mac,
            "this client is not configured to boot here",
        ));
    };
    let manifest = match state.store.current(&boot.image) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(%mac, image = %boot.image, error = %e, "no image to boot");
            return ipxe(script::refusal_script(
                mac,
                &format!("image {} is not in the store", boot.image),
            ));
        }
    };
    let params = ScriptParams {
        http_authority: &state.http_authority,
        tftp_authority: &state.tftp_authority,
        protocol: state.protocol,
        mac,
        boot: &boot,
        image: ImageRef {
            name: &manifest.name,
            version: &manifest.version,
            squashfs_sha256: &manifest.squashfs().sha256,
            boot_cpio: manifest.has_boot_cpio(),
        },
    };
    tracing::info!(%mac, image = %manifest.name, version = %manifest.version, "iPXE script");
    state.clients.record(
        &mac.to_string(),
        "ipxe-script",
        &format!("{} {}", manifest.name, manifest.version),
        false,
        Update {
            ip: peer(&connect),
            hostname: boot.hostname.clone(),
            image: Some((manifest.name.clone(), manifest.version.clone())),
            ..Default::default()
        },
    );
    ipxe(script::ipxe_script(&params))
}

fn ipxe(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn image_file(
    State(state): State<Arc<HttpState>>,
    Path((name, version, file)): Path<(String, String, String)>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    request: Request,
) -> Response {
    if validate_name("image name", &name).is_err()
        || validate_name("version", &version).is_err()
        || ![SQUASHFS, KERNEL, INITRD, BOOT_CPIO].contains(&file.as_str())
    {
        tracing::warn!(%name, %version, %file, "refused a request outside the image files");
        return text(StatusCode::NOT_FOUND, "no such image file\n".into());
    }
    let client = peer(&connect);
    let range = request
        .headers()
        .get(header::RANGE)
        .and_then(|r| r.to_str().ok())
        .unwrap_or("whole file")
        .to_string();
    // Which version each client really fetched, file by file: what a sysadmin checks after
    // publishing or rolling back while machines boot.
    tracing::info!(?client, %name, %version, %file, %range, "http: sending");
    let path = state.store.version_dir(&name, &version).join(&file);
    serve_file(path, request).await
}

async fn ipxe_file(
    State(state): State<Arc<HttpState>>,
    Path(file): Path<String>,
    request: Request,
) -> Response {
    if !state.ipxe_files.contains(&file) {
        return text(StatusCode::NOT_FOUND, "no such iPXE file\n".into());
    }
    serve_file(state.ipxe_dir.join(&file), request).await
}

async fn serve_file(path: PathBuf, request: Request) -> Response {
    if !path.is_file() {
        return text(StatusCode::NOT_FOUND, "not found\n".into());
    }
    match ServeFile::new(&path).oneshot(request).await {
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

async fn report(
    State(state): State<Arc<HttpState>>,
    Path(mac): Path<String>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    Form(report): Form<Report>,
) -> Response {
    let Ok(mac) = mac.parse::<Mac>() else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("{mac:?} is not a MAC address\n"),
        );
    };
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
    state.clients.record(
        &mac.to_string(),
        &report.stage,
        &detail,
        false,
        Update {
            ip: peer(&connect),
            ..Default::default()
        },
    );
    text(StatusCode::OK, "ok\n".into())
}

async fn clients(State(state): State<Arc<HttpState>>) -> Json<Vec<crate::clients::ClientRecord>> {
    Json(state.clients.all())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use diskless_image::manifest::{hash_file, Manifest};
    use std::collections::BTreeMap;

    struct Fixture {
        _dir: tempfile::TempDir,
        state: Arc<HttpState>,
        version: String,
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
        let config = diskless_boot::Config::parse(config, std::path::Path::new("t")).unwrap();
        let state = Arc::new(HttpState {
            store,
            policy: Policy::from_config(&config),
            clients: Arc::new(Clients::in_memory()),
            http_authority: "10.0.0.1:8080".into(),
            tftp_authority: "10.0.0.1".into(),
            protocol: ImageProtocol::Http,
            ipxe_dir,
            ipxe_files: vec!["ipxe.efi".into()],
        });
        Fixture {
            _dir: dir,
            state,
            version: manifest.version,
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
        let record = f.state.clients.get("52:54:00:12:34:56").unwrap();
        assert_eq!(record.stage(), "ipxe-script");
        assert_eq!(record.version.as_deref(), Some(f.version.as_str()));
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
        let record = f.state.clients.get("52:54:00:12:34:56").unwrap();
        assert_eq!(
            (record.stage(), record.stages[0].detail.as_str()),
            ("fetched", "mbps=90.1")
        );
        let (status, _, _) = call(&f.state, post("52-54-00-12-34-56", "stage=%3Cscript%3E")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _, _) = call(&f.state, post("zz", "stage=x")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _, body) = call(&f.state, get("/api/clients")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("\"stage\":\"fetched\""), "{body}");
    }
}
