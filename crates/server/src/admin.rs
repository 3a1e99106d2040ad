//! The admin listener: the dashboard, its JSON and live stream, the wake button, `/metrics`.
//!
//! It listens apart from the boot network's HTTP server (`admin_listen`, 127.0.0.1 by
//! default), so machines on the lab network reach neither the dashboard nor the metrics.
//!
//! ```text
//! GET  /              the dashboard (one page, compiled in: works offline)
//! GET  /api/clients   [ClientView]: every client's current or last boot
//! GET  /api/boots     [ClientView]: the last finished boots, newest first
//! GET  /api/images    [ImageView]: versions, sizes, current, which clients run which
//! GET  /api/events    server-sent events: `client` (a ClientView that changed),
//!                     `resync` (events were missed: fetch /api/clients again)
//! GET  /api/multicast [SessionView]: multicast sessions running, or stopped since the last join
//! POST /api/wake      {"macs": ["aa:bb:cc:dd:ee:ff", ...]} -> {"woke": [...], "udp_only": ...}
//! GET  /metrics       Prometheus text format
//! ```
//!
//! A [`ClientView`] is the [`ClientRecord`] (mac, ip, hostname, firmware, image, version,
//! boot_started, stages, and for a Secure Boot client whether its kernel is signed) with
//! `stage`, `last_seen`, `duration`, `finished`, `failure`, `phases` and `fill` (a seat whose
//! root came from the network, [`crate::boots::Fill`]) beside it.
//!
//! `/api/clients` is made once per change of the table and shared ([`SharedJson`]); the JSON
//! routes serve at most [`crate::shared_json::JSON_CONCURRENCY`] requests at once (the next
//! gets 503 with `Retry-After`).

use crate::boots::{BootHistory, ClientView};
use crate::metrics::{self, Metrics};
use crate::recorder::{ClientRecord, Published, Recorded, StageEvent};
use crate::shared_json::{busy, JsonLimit, SharedJson};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use diskless_boot::Mac;
use diskless_image::Store;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// The dashboard page: HTML, CSS and script in one file, no external resources.
pub const DASHBOARD: &str = include_str!("../assets/dashboard.html");

/// Finished boots kept for the lab view.
pub const HISTORY: usize = 200;

/// The client table as the recorder published it last (shared, not copied), with its version.
pub type Snapshot = Arc<dyn Fn() -> Arc<Published> + Send + Sync>;

/// What an open page is told.
#[derive(Debug, Clone)]
enum PageEvent {
    /// A client's record changed.
    Client(Arc<ClientRecord>),
    /// Changes were missed: fetch the table again.
    Resync,
}

/// What the admin handlers share.
pub struct AdminState {
    snapshot: Snapshot,
    /// Client records as they change; each page's stream subscribes to it.
    changes: broadcast::Sender<PageEvent>,
    history: Mutex<BootHistory>,
    store: Store,
    /// Where wake packets go out: the boot interface.
    interface: Option<String>,
    pub metrics: Arc<Metrics>,
    /// The DHCP leases file, for `diskless_dhcp_leases_active` (full mode).
    leases: Option<PathBuf>,
    /// Set when the server stops: open event streams end, so connections close.
    closing: tokio::sync::watch::Sender<bool>,
    /// Host names answered besides the listener's address (`admin_names`).
    names: Vec<String>,
    /// `/api/clients` for the table's current version.
    pub clients_json: SharedJson,
    /// JSON requests served at once.
    pub json_limit: JsonLimit,
    /// The boot network's multicast sessions (`/api/multicast`).
    multicast: Option<Arc<crate::multicast::Sessions>>,
}

impl AdminState {
    /// No client seen yet; `leases` is the DHCP leases file (full mode).
    pub fn new(
        snapshot: Snapshot,
        store: Store,
        interface: Option<String>,
        leases: Option<PathBuf>,
    ) -> AdminState {
        AdminState {
            snapshot,
            changes: broadcast::channel(1024).0,
            history: Mutex::new(BootHistory::new(HISTORY)),
            store,
            interface,
            metrics: Arc::new(Metrics::new()),
            leases,
            closing: tokio::sync::watch::Sender::new(false),
            names: Vec::new(),
            clients_json: SharedJson::default(),
            json_limit: JsonLimit::default(),
            multicast: None,
        }
    }

    /// Also answering to these host names (`admin_names`), besides the listener's address.
    pub fn with_names(mut self, names: Vec<String>) -> AdminState {
        self.names = names;
        self
    }

    /// With `metrics` shared with the rest of the server (the HTTP and TFTP access checks
    /// count their refusals there).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> AdminState {
        self.metrics = metrics;
        self
    }

    /// The multicast sessions `/api/multicast` shows.
    pub fn with_multicast(mut self, sessions: Arc<crate::multicast::Sessions>) -> AdminState {
        self.multicast = Some(sessions);
        self
    }

    /// Records of earlier runs (from `clients.json`): into the lab view, not into the metrics,
    /// which count what this server saw.
    pub fn seed(&self, records: &[Arc<ClientRecord>]) {
        let mut history = self.history.lock().expect("history lock");
        let mut records: Vec<&ClientRecord> = records.iter().map(|r| &**r).collect();
        records.sort_by(|a, b| a.boot_started.total_cmp(&b.boot_started));
        for record in records {
            history.add(record);
        }
    }

    /// Note a stage a client reached (a [`Recorded::Stage`] fact, each stage once): into the
    /// metrics, its record into the lab view's history if its boot ended, then to every open
    /// page.
    pub fn stage_reached(&self, stage: &StageEvent, record: Arc<ClientRecord>) {
        self.metrics.reached(stage, &record);
        self.history.lock().expect("history lock").add(&record);
        let _ = self.changes.send(PageEvent::Client(record));
    }

    /// Note one of the recorder's facts: a stage ([`AdminState::stage_reached`]), or an
    /// event for the protocol metrics.
    pub fn recorded(&self, fact: Recorded) {
        match fact {
            Recorded::Stage { stage, record, .. } => self.stage_reached(&stage, record),
            Recorded::Event(event) => self.metrics.boot_event(&event),
        }
    }
}

/// Feed `state` from the recorder's `updates` ([`crate::recorder::Recorder::subscribe`]) until `stopped`
/// completes: each stage reached to the stage metrics, its record to the pages and the lab
/// view; each protocol event to the other metrics.
pub async fn follow(
    state: Arc<AdminState>,
    mut updates: broadcast::Receiver<Recorded>,
    stopped: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stopped);
    loop {
        let update = tokio::select! {
            _ = &mut stopped => return,
            update = updates.recv() => update,
        };
        match update {
            Ok(fact) => state.recorded(fact),
            // The pages are told to fetch the table again; counts of the missed events are
            // lost (and said so).
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "admin pages behind the recorder: some metrics missed"
                );
                let _ = state.changes.send(PageEvent::Resync);
            }
            Err(broadcast::error::RecvError::Closed) => {
                stopped.await;
                return;
            }
        }
    }
}

/// Serve the admin pages on `listener` until `shutdown` completes, with the admin
/// listener's timeouts and caps for this process's descriptors, answering only requests
/// that name the listener's address or one of its names ([`crate::hostcheck`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = crate::conn::Limits::admin(&crate::conn::DescriptorBudget::of_this_process());
    serve_within(listener, state, limits, shutdown).await
}

/// [`serve`] within `limits`.
pub async fn serve_within(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    limits: crate::conn::Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let closing = state.closing.clone();
    // Only requests naming this listener (hostcheck.rs: DNS rebinding).
    let allowed = Arc::new(crate::hostcheck::AllowedHosts::new(
        listener.local_addr()?,
        &state.names,
    ));
    let app = router(state).layer(axum::middleware::from_fn_with_state(
        allowed,
        crate::hostcheck::guard,
    ));
    crate::conn::serve(listener, app, limits, async move {
        shutdown.await;
        let _ = closing.send(true);
    })
    .await
}

pub fn router(state: Arc<AdminState>) -> Router {
    let json = Router::new()
        .route("/api/clients", get(client_views))
        .route("/api/boots", get(boots))
        .route("/api/images", get(images))
        .route("/api/multicast", get(multicast_sessions))
        .route_layer(middleware::from_fn_with_state(state.clone(), json_limit));
    Router::new()
        .route("/", get(|| async { Html(DASHBOARD) }))
        .merge(json)
        .route("/api/events", get(events))
        .route("/api/wake", post(wake))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// A JSON route's request, if there is room for it ([`JsonLimit`]).
async fn json_limit(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    match state.json_limit.enter() {
        Some(_permit) => next.run(request).await,
        None => busy(),
    }
}

/// Every client's [`ClientView`] (the boot network's `/api/clients` serves the bare
/// [`ClientRecord`]s: `Route::ClientRecords`).
async fn client_views(State(state): State<Arc<AdminState>>) -> Response {
    let table = (state.snapshot)();
    let version = table.version;
    state
        .clients_json
        .response(version, move || {
            let views: Vec<ClientView> = table
                .records
                .values()
                .map(|r| ClientView::from(ClientRecord::clone(r)))
                .collect();
            serde_json::to_vec(&views)
        })
        .await
}

async fn boots(State(state): State<Arc<AdminState>>) -> Json<Vec<ClientView>> {
    Json(state.history.lock().expect("history lock").newest_first())
}

/// An image and its versions.
#[derive(Debug, Serialize)]
pub struct ImageView {
    pub name: String,
    pub current: Option<String>,
    /// Oldest first.
    pub versions: Vec<VersionView>,
}

#[derive(Debug, Serialize)]
pub struct VersionView {
    pub version: String,
    pub created: String,
    pub kernel_version: String,
    /// All its files, in bytes.
    pub size: u64,
    pub squashfs_size: u64,
    pub current: bool,
    /// Whether its kernel carries a signature, as a Secure Boot client's shim requires
    /// (`None`: cannot tell, e.g. no kernel file).
    pub kernel_signed: Option<bool>,
    /// MACs of the clients whose last boot used this version.
    pub clients: Vec<String>,
}

/// The store's images and which clients run which version.
pub fn image_views<'a>(
    store: &Store,
    records: impl Iterator<Item = &'a ClientRecord> + Clone,
) -> Vec<ImageView> {
    let mut out = Vec::new();
    for name in store.images().unwrap_or_default() {
        let current = store.current_version(&name).ok();
        let versions = store
            .versions(&name)
            .unwrap_or_default()
            .into_iter()
            .map(|m| VersionView {
                size: m.files.values().map(|f| f.size).sum(),
                squashfs_size: m.squashfs().size,
                current: current.as_deref() == Some(m.version.as_str()),
                kernel_signed: store.kernel_signed(&name, &m.version).ok(),
                clients: records
                    .clone()
                    .filter(|r| {
                        r.image.as_deref() == Some(name.as_str())
                            && r.version.as_deref() == Some(m.version.as_str())
                    })
                    .map(|r| r.mac.to_string())
                    .collect(),
                version: m.version,
                created: m.created,
                kernel_version: m.kernel_version,
            })
            .collect();
        out.push(ImageView {
            name,
            current,
            versions,
        });
    }
    out
}

async fn multicast_sessions(
    State(state): State<Arc<AdminState>>,
) -> Json<Vec<crate::multicast::SessionView>> {
    Json(match &state.multicast {
        Some(sessions) => sessions.views().await,
        None => Vec::new(),
    })
}

async fn images(State(state): State<Arc<AdminState>>) -> Json<Vec<ImageView>> {
    let table = (state.snapshot)();
    let store = state.store.clone();
    let views = tokio::task::spawn_blocking(move || {
        image_views(&store, table.records.values().map(|r| &**r))
    })
    .await
    .unwrap_or_default();
    Json(views)
}

async fn events(
    State(state): State<Arc<AdminState>>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let rx = state.changes.subscribe();
    let mut closing = state.closing.subscribe();
    let closed = async move {
        let _ = closing.wait_for(|closing| *closing).await;
    };
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(PageEvent::Client(record)) => Event::default()
                .event("client")
                .json_data(ClientView::from(ClientRecord::clone(&record)))
                .expect("a client view serializes"),
            // A page too slow to keep up refetches everything rather than show a stale row.
            Ok(PageEvent::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                Event::default().event("resync").data("")
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    });
    Sse::new(futures_util::StreamExt::take_until(stream, closed)).keep_alive(KeepAlive::default())
}

#[derive(Debug, Deserialize)]
struct WakeRequest {
    macs: Vec<String>,
}

#[derive(Debug, Serialize)]
struct WakeReply {
    woke: Vec<String>,
    /// Why only the UDP broadcast was sent, if so.
    udp_only: Option<String>,
}

async fn wake(State(state): State<Arc<AdminState>>, Json(request): Json<WakeRequest>) -> Response {
    let mut macs = Vec::new();
    for m in &request.macs {
        match m.parse::<Mac>() {
            Ok(mac) => macs.push(mac),
            Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        }
    }
    if macs.is_empty() {
        return (StatusCode::BAD_REQUEST, "no MAC to wake").into_response();
    }
    let Some(interface) = state.interface.clone() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the server has no interface to send wake packets on",
        )
            .into_response();
    };
    let sent = tokio::task::spawn_blocking(move || {
        let sender = diskless_wake::Sender::open(&interface)?;
        for mac in &macs {
            sender.send(*mac)?;
        }
        tracing::info!(%interface, count = macs.len(), "wake-on-LAN packets sent");
        Ok::<_, diskless_wake::WakeError>(WakeReply {
            woke: macs.iter().map(Mac::to_string).collect(),
            udp_only: sender.ethernet_unavailable().map(str::to_string),
        })
    })
    .await;
    match sent {
        Ok(Ok(reply)) => Json(reply).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Bound leases that have not expired, from the leases file the DHCP server writes.
fn active_leases(path: &std::path::Path) -> usize {
    let now = diskless_dhcp::lease::unix_secs(std::time::SystemTime::now());
    diskless_dhcp::lease::LeaseStore::load(path)
        .map(|store| {
            store
                .iter()
                .filter(|l| l.state == diskless_dhcp::lease::LeaseState::Bound && l.expires > now)
                .count()
        })
        .unwrap_or(0)
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    if let Some(path) = state.leases.clone() {
        let n = tokio::task::spawn_blocking(move || active_leases(&path))
            .await
            .unwrap_or(0);
        state.metrics.set_leases_active(n);
    }
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::{BootEvent, DhcpAction};
    use crate::shared_json::JSON_CONCURRENCY;
    use axum::body::Body;
    use diskless_boot::Stage;
    use tower::ServiceExt;

    async fn get_path(state: &Arc<AdminState>, path: &str) -> Response {
        let request = axum::http::Request::get(path).body(Body::empty()).unwrap();
        router(state.clone()).oneshot(request).await.unwrap()
    }

    async fn body_text(response: Response) -> String {
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8_lossy(&body).into_owned()
    }

    fn table(version: u64, macs: &[&str]) -> Arc<Published> {
        Arc::new(Published {
            version,
            records: macs
                .iter()
                .map(|m| {
                    let mac: Mac = m.parse().unwrap();
                    (mac, Arc::new(ClientRecord::new(mac, 100.0)))
                })
                .collect(),
        })
    }

    #[tokio::test]
    async fn clients_are_serialized_once_per_change_of_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let current = Arc::new(Mutex::new(table(1, &["52:54:00:00:00:01"])));
        let state = Arc::new(AdminState::new(
            {
                let current = current.clone();
                Arc::new(move || current.lock().unwrap().clone())
            },
            Store::open(dir.path()).unwrap(),
            None,
            None,
        ));
        let first = body_text(get_path(&state, "/api/clients").await).await;
        let second = body_text(get_path(&state, "/api/clients").await).await;
        assert!(first.contains("52:54:00:00:00:01"), "{first}");
        assert_eq!(
            (first.as_str(), state.clients_json.made()),
            (second.as_str(), 1)
        );
        *current.lock().unwrap() = table(2, &["52:54:00:00:00:01", "52:54:00:00:00:02"]);
        let third = body_text(get_path(&state, "/api/clients").await).await;
        assert!(third.contains("52:54:00:00:00:02"), "{third}");
        assert_eq!(state.clients_json.made(), 2);
    }

    #[tokio::test]
    async fn json_routes_refuse_one_request_more_than_the_limit() {
        let (_dir, state) = state(None);
        let held: Vec<_> = (0..JSON_CONCURRENCY)
            .map(|_| state.json_limit.enter().unwrap())
            .collect();
        for path in ["/api/clients", "/api/boots", "/api/images"] {
            let refused = get_path(&state, path).await;
            assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert_eq!(refused.headers()[header::RETRY_AFTER], "1", "{path}");
        }
        // The page and the metrics are not JSON routes: they stay up.
        assert_eq!(get_path(&state, "/metrics").await.status(), StatusCode::OK);
        drop(held);
        assert_eq!(
            get_path(&state, "/api/clients").await.status(),
            StatusCode::OK
        );
    }

    fn state(interface: Option<&str>) -> (tempfile::TempDir, Arc<AdminState>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let state = AdminState::new(
            Arc::new(|| Arc::new(Published::default())),
            store,
            interface.map(str::to_string),
            None,
        );
        (dir, Arc::new(state))
    }

    async fn post_wake(state: &Arc<AdminState>, body: &str) -> (StatusCode, String) {
        let request = axum::http::Request::post("/api/wake")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = router(state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// `/api/multicast`: no sessions, an empty list (the sessions' own fields are tested in
    /// crate::multicast); the dashboard has the tab that reads it.
    #[tokio::test]
    async fn multicast_sessions_are_listed() {
        let (_dir, state) = state(None);
        let state = Arc::new(
            Arc::try_unwrap(state)
                .ok()
                .unwrap()
                .with_multicast(Arc::new(crate::multicast::Sessions::default())),
        );
        let request = axum::http::Request::get("/api/multicast")
            .header(header::HOST, "127.0.0.1")
            .body(Body::empty())
            .unwrap();
        let response = router(state.clone()).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        assert_eq!(&body[..], b"[]");
        assert!(DASHBOARD.contains("getJson(\"api/multicast\")"));
    }

    #[tokio::test]
    async fn wake_refuses_bad_input_and_names_a_missing_interface() {
        let (_dir, with_none) = state(None);
        let (status, body) = post_wake(&with_none, r#"{"macs": ["52:54:00:00:00:01"]}"#).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let (_dir, with_bad) = state(Some("nosuchif0"));
        let (status, body) = post_wake(&with_bad, r#"{"macs": ["nonsense"]}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("not a MAC address"), "{body}");
        let (status, _) = post_wake(&with_bad, r#"{"macs": []}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, body) = post_wake(&with_bad, r#"{"macs": ["52:54:00:00:00:01"]}"#).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("no interface named nosuchif0"), "{body}");
    }

    /// One request over TCP to a served admin listener; the status line and headers.
    async fn ask(addr: std::net::SocketAddr, request: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_served_listener_answers_its_own_host_and_names_only() {
        let (_dir, state) = state(None);
        let state = Arc::new(
            Arc::into_inner(state)
                .unwrap()
                .with_names(vec!["boot.lab.example".into()]),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let limits = crate::conn::Limits::admin(&crate::conn::DescriptorBudget::from_nofile(1024));
        let served = tokio::spawn(serve_within(listener, state, limits, async {
            let _ = stopped.await;
        }));
        let get = |host: &str, extra: &str| {
            format!("GET /api/clients HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
        };
        let own = ask(addr, &get(&addr.to_string(), "")).await;
        assert!(own.starts_with("HTTP/1.1 200"), "{own}");
        let named = ask(addr, &get("boot.lab.example:9180", "")).await;
        assert!(named.starts_with("HTTP/1.1 200"), "{named}");
        // A DNS rebinding page: its own name in Host.
        let rebound = ask(addr, &get("evil.example:9180", "")).await;
        assert!(rebound.starts_with("HTTP/1.1 421"), "{rebound}");
        // A page of another site posting a wake to the right host.
        let wake = format!(
            "POST /api/wake HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://evil.example\r\n\
             Content-Type: application/json\r\nContent-Length: 11\r\nConnection: close\r\n\r\n\
             {{\"macs\":[]}}"
        );
        let posted = ask(addr, &wake).await;
        assert!(posted.starts_with("HTTP/1.1 403"), "{posted}");
        let _ = stop.send(());
        served.await.unwrap().unwrap();
    }

    /// Publish version `version` of image `lab` with `kernel` as its kernel.
    fn publish(store: &Store, version: &str, kernel: &[u8]) {
        use diskless_image::manifest::{KERNEL, SQUASHFS};
        store
            .publish_files("lab", version, &[(SQUASHFS, b"squashfs"), (KERNEL, kernel)])
            .unwrap();
    }

    #[tokio::test]
    async fn images_say_whether_each_versions_kernel_is_signed() {
        // Debian's shim is signed (as Debian's kernels are), Debian's iPXE is not (as a
        // custom kernel would not be).
        let read = |path: &str, package: &str| {
            std::fs::read(path)
                .unwrap_or_else(|e| panic!("{path}: {e} (install {package}: scripts/install-deps)"))
        };
        let (dir, state) = state(None);
        publish(
            &state.store,
            "signed",
            &read("/usr/lib/shim/shimx64.efi.signed", "shim-signed"),
        );
        publish(
            &state.store,
            "unsigned",
            &read("/usr/lib/ipxe/ipxe.efi", "ipxe"),
        );
        publish(&state.store, "not-a-pe", b"kernel");
        let request = axum::http::Request::get("/api/images")
            .body(Body::empty())
            .unwrap();
        let response = router(state.clone()).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let images: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let signed: std::collections::BTreeMap<String, serde_json::Value> = images[0]["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["version"].as_str().unwrap().to_string(),
                    v["kernel_signed"].clone(),
                )
            })
            .collect();
        assert_eq!(
            signed,
            [
                ("not-a-pe".to_string(), serde_json::Value::Null),
                ("signed".to_string(), serde_json::Value::Bool(true)),
                ("unsigned".to_string(), serde_json::Value::Bool(false)),
            ]
            .into(),
            "{images}"
        );
        drop(dir);
    }

    #[tokio::test]
    async fn each_stage_is_counted_once_from_the_recorders_facts() {
        let (_dir, state) = state(None);
        let recorder =
            crate::recorder::Recorder::with_records(Default::default(), Default::default());
        let mut facts = recorder.subscribe();
        let mut pages = state.changes.subscribe();
        let mac: Mac = "52:54:00:00:00:01".parse().unwrap();
        let feed = |facts: &mut broadcast::Receiver<Recorded>| {
            while let Ok(fact) = facts.try_recv() {
                state.recorded(fact);
            }
        };
        recorder.record(BootEvent::Dhcp {
            mac,
            firmware: diskless_dhcp::ClientKind::Ipxe,
            action: DhcpAction::Offer,
            ip: None,
            detail: None,
        });
        feed(&mut facts);
        // The record is seen again with its earlier stage: only the new one counts.
        recorder.record(BootEvent::Report {
            mac,
            client: None,
            stage: Stage::MultiUser,
            detail: String::new(),
            boot: crate::tokens::BootId(1),
        });
        feed(&mut facts);
        let text = state.metrics.render();
        assert!(
            text.contains("diskless_boot_stage_reached_total{image=\"-\",stage=\"dhcp-offer\"} 1"),
            "{text}"
        );
        assert!(text.contains("stage=\"multi-user\"} 1"), "{text}");
        assert!(
            text.contains("diskless_dhcp_packets_received_total{type=\"discover\"} 1"),
            "{text}"
        );
        match pages.recv().await.unwrap() {
            PageEvent::Client(r) => assert_eq!(r.stages.len(), 1),
            other => panic!("{other:?}"),
        }
        assert_eq!(state.history.lock().unwrap().newest_first().len(), 1);
    }
}
