//! The diskless boot server: DHCP, TFTP and HTTP on one interface, and the record of every
//! client boot. This is the only crate that binds sockets.
//!
//! In mini-redis's manner the caller owns the sockets and the shutdown signal:
//!
//! ```text
//! // as a user with CAP_NET_BIND_SERVICE, and CAP_NET_RAW for router advertisements
//! // (diskless.service, or `diskless serve` started as root, which drops to that before its
//! // runtime starts any thread)
//! let site = resolve_site(&config)?;              // the config, resolved once (diskless_boot::Site)
//! let listeners = Listeners::bind(&site)?;        // ports 67, 69, 80, raw ICMPv6
//! let (handle, site) = site_channel(site);        // handle.reload(new_site) on SIGHUP
//! run(listeners, site, shutdown).await?;          // until `shutdown` completes
//! ```
//!
//! [`run`] first does everything that can fail before a socket is served (`prepare`: the
//! store, the iPXE files, the report key, the Secure Boot chain), then starts one task per
//! protocol (a `spawn_*` function each) and the recorder, and stops and joins every one of
//! them when `shutdown` completes or one fails:
//!
//! - DHCP ([`diskless_dhcp::run`]), full or proxy; what each firmware gets is the
//!   [`booter::Booter`]'s offer (the current site's [`diskless_boot::decision`]).
//! - TFTP ([`diskless_tftp::server`]) over the store: iPXE binaries and, when
//!   `image_protocol = "tftp"`, the images; the Secure Boot chain's files from the Booter.
//! - HTTP ([`http`]): scripts and GRUB configs (from the Booter), image files, stage
//!   reports, on the routes of [`diskless_boot::routes`].
//! - With `unknown_clients = "ignore"`, HTTP and TFTP answer only listed clients: [`access`]
//!   maps a peer's address to its MAC and decides.
//! - IPv6 router advertisements ([`ra`]), when the site wants them.
//! - The recorder ([`recorder`]): every protocol's [`BootEvent`]s, the client table with each
//!   client's current boot (the report tokens' [`tokens::Boots`] check against it), facts
//!   for the admin pages and metrics, and `clients.json`.
//!
//! The site is read from a `watch` channel at each decision: [`SiteHandle::reload`] makes the
//! next DHCP request and the next script follow a new config. Leases, running transfers and
//! the client record are untouched by a reload.

pub mod access;
pub mod admin;
pub mod booter;
pub mod boots;
pub mod conn;
pub mod hostcheck;
pub mod http;
pub mod metrics;
pub mod multicast;
pub mod netif;
pub mod ra;
pub mod recorder;
pub mod shared_json;
pub mod tokens;

use diskless_boot::config::Config;
use diskless_boot::grub::GrubNet;
use diskless_boot::routes::IPXE_DIR;
use diskless_boot::site::SiteError;
use diskless_boot::Site;
use diskless_dhcp::{DhcpEvent, DhcpSockets, EventAction};
use diskless_image::Store;
use recorder::{BootEvent, DhcpAction, Recorder};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The served interface cannot be used (the message names it).
    #[error("{message}")]
    Interface { interface: String, message: String },
    /// The config cannot be resolved on the interface.
    #[error(transparent)]
    Site(#[from] SiteError),
    /// A directory the server needs cannot be made.
    #[error("creating {path}: {source}")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file `[accounts]` names cannot be read.
    #[error(
        "{path}: {source}: [accounts] needs it (passwd, group, and the SSH server's public host \
         keys: install openssh-server, or set ssh_host_keys)"
    )]
    AccountsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An iPXE binary is missing from `[ipxe] dir`.
    #[error(
        "{path}: {source}: install Debian's ipxe package (apt-get install ipxe), or set [ipxe] dir"
    )]
    IpxeMissing {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A signed binary of the Secure Boot chain is missing.
    #[error(
        "{path} is missing: the Secure Boot chain (secure_boot = true) needs Debian's {package} \
         package (apt-get install {package})"
    )]
    SecureBootMissing {
        path: &'static str,
        package: &'static str,
    },
    /// An iPXE binary cannot be copied into the store.
    #[error(transparent)]
    IpxeInstall(#[from] diskless_dhcp::state_file::WriteError),
    /// A socket cannot be bound.
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("DHCP: {0}")]
    Dhcp(#[from] diskless_dhcp::DhcpError),
    #[error("TFTP: {0}")]
    Tftp(#[from] diskless_tftp::server::Error),
    #[error("HTTP on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The admin listener failed.
    #[error("admin listener on {addr:?}: {source}")]
    Admin {
        addr: Option<SocketAddr>,
        source: std::io::Error,
    },
    /// A server task panicked.
    #[error("a server task failed: {0}")]
    Task(tokio::task::JoinError),
    #[error(transparent)]
    Image(#[from] diskless_image::Error),
    /// The report key cannot be read or made.
    #[error(transparent)]
    ReportKey(#[from] tokens::KeyError),
}

/// Why a reload was not applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The new site changes something only a restart applies.
    #[error("the new config changes the {0}: restart the server to apply it")]
    RestartNeeded(&'static str),
    /// The server has stopped.
    #[error("the server is not running")]
    Stopped,
}

/// Resolve `config` on its interface: the interface's address, then [`Site::resolve`].
pub fn resolve_site(config: &Config) -> Result<Site, ServerError> {
    let interface = config.interface.as_deref().ok_or(SiteError::NoInterface)?;
    let addr = netif::ipv4_of(interface).map_err(|message| ServerError::Interface {
        interface: interface.to_string(),
        message,
    })?;
    let site = Site::resolve(config, addr.ip, addr.netmask)?;
    check_accounts_files(&site)?;
    Ok(site)
}

/// The files `[accounts]` serves from are readable now (they are read again at each request,
/// so a user added later is served): a missing host key is named at start, not at a client's
/// boot.
pub fn check_accounts_files(site: &Site) -> Result<(), ServerError> {
    let Some(accounts) = &site.accounts else {
        return Ok(());
    };
    let files = [&accounts.passwd, &accounts.group]
        .into_iter()
        .chain(&accounts.ssh_host_keys);
    for path in files {
        std::fs::File::open(path).map_err(|source| ServerError::AccountsFile {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Where a reload sends the new site. Cheap to clone.
#[derive(Clone)]
pub struct SiteHandle {
    tx: Arc<watch::Sender<Arc<Site>>>,
}

/// The channel [`run`] reads the site from, and its [`SiteHandle`].
pub fn site_channel(site: Site) -> (SiteHandle, watch::Receiver<Arc<Site>>) {
    let (tx, rx) = watch::channel(Arc::new(site));
    (SiteHandle { tx: Arc::new(tx) }, rx)
}

impl SiteHandle {
    /// Make `site` the current site: the next DHCP request and script request follow it.
    /// Refused when it changes what only a restart applies ([`Site::restart_needed`]).
    pub fn reload(&self, site: Site) -> Result<(), ReloadError> {
        if let Some(what) = self.tx.borrow().restart_needed(&site) {
            return Err(ReloadError::RestartNeeded(what));
        }
        self.tx
            .send(Arc::new(site))
            .map_err(|_| ReloadError::Stopped)?;
        tracing::info!("site config reloaded");
        Ok(())
    }

    /// The current site.
    pub fn current(&self) -> Arc<Site> {
        self.tx.borrow().clone()
    }
}

/// The sockets the server serves on, bound by the caller (with the capabilities
/// binding needs) or handed in by tests.
pub struct Listeners {
    /// Port 67 (and 4011 in proxy mode), tied to the interface.
    pub dhcp: DhcpSockets,
    /// The TFTP request socket.
    pub tftp: tokio::net::UdpSocket,
    /// The HTTP listener.
    pub http: tokio::net::TcpListener,
    /// The raw ICMPv6 socket for router advertisements, when the site wants them.
    pub ra: Option<ra::RaSocket>,
    /// The admin listener (dashboard, `/metrics`), unless `admin_listen = "off"`.
    pub admin: Option<tokio::net::TcpListener>,
    /// The raw IGMP socket of `[multicast] querier = true`.
    pub querier: Option<multicast::Querier>,
}

impl Listeners {
    /// Bind everything `site` serves on: DHCP on its interface, TFTP and HTTP on its address
    /// and ports, and the router advertisement socket if `ipv6_ra` (a failure there is a
    /// warning: iPXE then waits ~13 s for a router). Call within a tokio runtime.
    pub fn bind(site: &Site) -> Result<Listeners, ServerError> {
        let dhcp = DhcpSockets::bind(&site.interface, site.mode)?;
        let tftp_addr = SocketAddr::new(IpAddr::V4(site.server_ip), site.tftp_port);
        let tftp = diskless_tftp::server::bind(tftp_addr).map_err(|source| ServerError::Bind {
            what: "TFTP",
            addr: tftp_addr,
            source,
        })?;
        let http_addr = SocketAddr::new(IpAddr::V4(site.server_ip), site.http_port);
        let http = std::net::TcpListener::bind(http_addr)
            .and_then(|l| {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)
            })
            .map_err(|source| ServerError::Bind {
                what: "HTTP",
                addr: http_addr,
                source,
            })?;
        let admin = site
            .admin
            .map(|addr| {
                std::net::TcpListener::bind(addr)
                    .and_then(|l| {
                        l.set_nonblocking(true)?;
                        tokio::net::TcpListener::from_std(l)
                    })
                    .map_err(|source| ServerError::Bind {
                        what: "the admin listener (admin_listen, --admin-listen)",
                        addr,
                        source,
                    })
            })
            .transpose()?;
        let ra = if site.ipv6_ra != diskless_boot::site::Ipv6Ra::Off {
            ra::RaSocket::open(&site.interface)
                .map_err(|e| {
                    tracing::warn!(error = %e, "IPv6 router advertisements off: iPXE may wait ~13 s for one");
                })
                .ok()
        } else {
            None
        };
        // Opened at start, as the RA socket: the server may give up CAP_NET_RAW after. (So a
        // reload can pause the queries but not start them: that takes a restart.)
        let querier = site.multicast.filter(|m| m.querier).and_then(|_| {
            multicast::Querier::open(site.server_ip)
                .map_err(|e| {
                    tracing::warn!(error = %e, "[multicast] querier: no IGMP socket, no queries");
                })
                .ok()
        });
        Ok(Listeners {
            dhcp,
            tftp,
            http,
            ra,
            admin,
            querier,
        })
    }
}

/// Copy the iPXE binaries clients need into the store, naming the package when one is missing.
/// Returns their directory and names.
pub fn install_ipxe_files(site: &Site) -> Result<(PathBuf, Vec<String>), ServerError> {
    let dir = site.store.join(IPXE_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| ServerError::Directory {
        path: dir.clone(),
        source,
    })?;
    let mut names = vec![site.ipxe.bios.clone(), site.ipxe.uefi.clone()];
    names.dedup();
    for name in &names {
        let from = site.ipxe.dir.join(name);
        let data = std::fs::read(&from).map_err(|source| ServerError::IpxeMissing {
            path: from.clone(),
            source,
        })?;
        let to = dir.join(name);
        if std::fs::read(&to).ok().as_deref() != Some(&data[..]) {
            diskless_dhcp::state_file::write_atomic(&to, &data)?;
        }
    }
    Ok((dir, names))
}

/// A DHCP answer as a recorder event (releases, declines and exhaustion are only logged).
fn dhcp_event(event: &DhcpEvent) -> Option<BootEvent> {
    let (action, ip, detail) = match &event.action {
        EventAction::Offer { ip, file } => (DhcpAction::Offer, *ip, file.clone()),
        EventAction::Ack { ip, file } => (DhcpAction::Ack, *ip, file.clone()),
        EventAction::Nak { reason, .. } => (DhcpAction::Nak, None, Some(reason.to_string())),
        _ => return None,
    };
    Some(BootEvent::Dhcp {
        mac: event.mac,
        firmware: event.kind,
        action,
        ip,
        detail,
    })
}

/// Run the boot server on `listeners` until `shutdown` completes, with a recorder of its own
/// writing `STATE/clients.json`.
pub async fn run(
    listeners: Listeners,
    site: watch::Receiver<Arc<Site>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let current = site.borrow().clone();
    std::fs::create_dir_all(&current.state).map_err(|source| ServerError::Directory {
        path: current.state.clone(),
        source,
    })?;
    let (recorder, recorder_task) =
        Recorder::start(Some(clients_file(&current.state)), (&current.record).into());
    let result = run_with_recorder(listeners, site, recorder, shutdown).await;
    recorder_task.stop().await;
    result
}

/// [`run`] with the caller's [`Recorder`] (the caller stops it after this returns):
/// [`prepare`], then one task per protocol, then [`Tasks::drain`].
pub async fn run_with_recorder(
    listeners: Listeners,
    site: watch::Receiver<Arc<Site>>,
    recorder: Recorder,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let prepared = prepare(&listeners, site, recorder)?;
    let Listeners {
        dhcp,
        tftp,
        http,
        ra,
        admin,
        querier,
    } = listeners;
    let mut tasks = Tasks::new();
    spawn_dhcp(&mut tasks, &prepared, dhcp);
    spawn_tftp(&mut tasks, &prepared, tftp);
    if let Some(listener) = admin {
        spawn_admin(&mut tasks, &prepared, listener);
    }
    spawn_http(&mut tasks, &prepared, http);
    if let (Some(socket), Some(answer)) = (ra, prepared.ra_answer) {
        spawn_ra(&mut tasks, socket, answer);
    }
    if let Some(querier) = querier {
        let (site, stopped) = (prepared.site.clone(), tasks.stopped());
        tasks.spawn(async move {
            querier.run(site, stopped).await;
            Ok(())
        });
    }
    tasks.drain(shutdown).await
}

/// What the protocol tasks share, made by [`prepare`] before any socket is served.
struct Prepared {
    /// The site channel, read at each decision.
    site: watch::Receiver<Arc<Site>>,
    /// The site at start: what only a restart changes (interface, mode, state, ports).
    current: Arc<Site>,
    /// Whose router solicitations to answer; in proxy mode the DHCP hook arms it.
    ra_answer: Option<ra::Answer>,
    /// HTTP connections and TFTP transfers share the process's descriptors (conn.rs).
    budget: conn::DescriptorBudget,
    store: Store,
    recorder: Recorder,
    /// Report tokens, checked against the boots the recorder keeps.
    boots: Arc<tokens::Boots>,
    /// What each client boots: DHCP, the HTTP script route and the TFTP/GRUB hook ask it.
    booter: Arc<booter::Booter>,
    /// The iPXE binaries' directory in the store, and their names.
    ipxe: (PathBuf, Vec<String>),
    /// One set of metrics: the admin pages render it, the access checks count refusals in it.
    metrics: Arc<metrics::Metrics>,
    /// The multicast sessions: the boot network's HTTP server starts them, the dashboard
    /// shows them.
    multicast: Arc<multicast::Sessions>,
    /// The HTTP and TFTP servers' access check, counting refusals in `metrics`.
    access: access::Access,
    /// The HTTP listener's address, for its errors.
    http_addr: SocketAddr,
}

/// Everything that can fail before a socket is served: the store, the iPXE files, the report
/// key, the Secure Boot chain, the listener's address; and the descriptor budget.
fn prepare(
    listeners: &Listeners,
    site: watch::Receiver<Arc<Site>>,
    recorder: Recorder,
) -> Result<Prepared, ServerError> {
    let current = site.borrow().clone();
    let store = open_store(&current)?;
    let ipxe = install_ipxe_files(&current)?;
    let key = tokens::ReportKey::load_or_create(&current.state)?;
    let boots = Arc::new(tokens::Boots::new(key, recorder.clone()));
    let grub = if current.secure_boot_used() {
        check_secure_boot_chain(&current, &store)?
    } else {
        diskless_boot::grub::GrubNet::Tftp
    };
    let ra_answer = listeners.ra.as_ref().map(|_| match current.ipv6_ra {
        diskless_boot::site::Ipv6Ra::Booting => ra::Answer::Booting(Default::default()),
        _ => ra::Answer::All,
    });
    let http_addr = listeners
        .http
        .local_addr()
        .map_err(|source| ServerError::Http {
            addr: SocketAddr::new(IpAddr::V4(current.server_ip), current.http_port),
            source,
        })?;
    tracing::info!(
        interface = %current.interface, server = %current.server_ip, mode = ?current.mode,
        store = %current.store.display(), http = %http_addr, tftp_port = current.tftp_port,
        "diskless server starting"
    );
    let budget = conn::DescriptorBudget::of_this_process();
    tracing::info!(
        nofile = budget.nofile,
        http_connections = budget.http_connections,
        admin_connections = budget.admin_connections,
        tftp_transfers = budget.tftp_transfers,
        "descriptor budget"
    );
    let metrics = Arc::new(metrics::Metrics::new());
    let access = access::Access::new(metrics.clone());
    let booter = Arc::new(booter::Booter::new(
        site.clone(),
        store.clone(),
        recorder.clone(),
        boots.clone(),
        grub,
    ));
    Ok(Prepared {
        site,
        current,
        ra_answer,
        budget,
        store,
        recorder,
        boots,
        booter,
        ipxe,
        multicast: Arc::new(multicast::Sessions::new(metrics.clone())),
        metrics,
        access,
        http_addr,
    })
}

/// The store, with a warning when the default image is not in it (clients are told so).
fn open_store(site: &Site) -> Result<Store, ServerError> {
    let store = Store::open(&site.store)?;
    if let Some(image) = &site.default_image {
        if let Err(e) = store.current(image) {
            tracing::warn!(%image, error = %e, "the default image is not in the store: clients will be told so");
        }
    }
    Ok(store)
}

/// Every task the server starts, each ending on one stop signal.
struct Tasks {
    set: tokio::task::JoinSet<Result<(), ServerError>>,
    stop: watch::Sender<bool>,
}

impl Tasks {
    fn new() -> Tasks {
        Tasks {
            set: tokio::task::JoinSet::new(),
            stop: watch::channel(false).0,
        }
    }

    /// A future that completes when the tasks are told to stop.
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    fn spawn(&mut self, task: impl Future<Output = Result<(), ServerError>> + Send + 'static) {
        self.set.spawn(task);
    }

    /// Wait for `shutdown` or the end of any task, then stop and join every task: each gets
    /// 5 s to finish what it is doing (an HTTP download in progress, say), then the rest are
    /// aborted. The result is the first task's error, if one ended the server.
    async fn drain(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        tokio::pin!(shutdown);
        let result: Result<(), ServerError> = tokio::select! {
            _ = &mut shutdown => Ok(()),
            Some(ended) = self.set.join_next() => ended.map_err(ServerError::Task).and_then(|r| r),
        };
        let _ = self.stop.send(true);
        let drain = async {
            while let Some(ended) = self.set.join_next().await {
                if let Err(e) = ended.map_err(ServerError::Task).and_then(|r| r) {
                    tracing::warn!(error = %e, "while stopping");
                }
            }
        };
        if tokio::time::timeout(std::time::Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            tracing::warn!("server tasks still busy after 5 s: stopping them");
            self.set.abort_all();
            while self.set.join_next().await.is_some() {}
        }
        tracing::info!("diskless server stopped");
        result
    }
}

/// DHCP, full or proxy: each answer is the Booter's and is recorded.
fn spawn_dhcp(tasks: &mut Tasks, prepared: &Prepared, sockets: DhcpSockets) {
    let config = prepared.current.dhcp_config();
    let leases = prepared.current.state.join("leases.json");
    let policy: Arc<dyn diskless_dhcp::BootPolicy> = prepared.booter.clone();
    let booting = prepared.ra_answer.as_ref().and_then(ra::Answer::booting);
    let on_dhcp = dhcp_sink(prepared.recorder.clone(), booting);
    let stopped = tasks.stopped();
    tasks.spawn(async move {
        diskless_dhcp::run(
            sockets,
            config,
            Some(leases),
            policy,
            Some(on_dhcp),
            stopped,
        )
        .await
        .map_err(ServerError::from)
    });
}

/// The DHCP server's hook: each answer armed in the proxy-mode router advertisements
/// (`booting`, a control path of its own) and recorded.
fn dhcp_sink(
    recorder: Recorder,
    booting: Option<Arc<std::sync::Mutex<ra::Booting>>>,
) -> diskless_dhcp::EventSink {
    Arc::new(move |event: &DhcpEvent| {
        if let Some(event) = dhcp_event(event) {
            if let Some(booting) = &booting {
                let mut booting = booting.lock().unwrap_or_else(|e| e.into_inner());
                booting.event(&event, std::time::Instant::now());
            }
            recorder.record(event);
        }
    })
}

/// TFTP over the store, within the descriptor budget.
fn spawn_tftp(tasks: &mut Tasks, prepared: &Prepared, socket: tokio::net::UdpSocket) {
    let config = tftp_config(prepared);
    let stopped = tasks.stopped();
    tasks.spawn(async move {
        diskless_tftp::server::serve(socket, config, stopped)
            .await
            .map_err(ServerError::from)
    });
}

/// The TFTP server's hooks: the access check, the record of each transfer, and the Secure Boot
/// chain's files ([`booter::Booter::chain_file`]).
fn tftp_config(prepared: &Prepared) -> diskless_tftp::server::ServerConfig {
    let mut config = diskless_tftp::server::ServerConfig::new(&prepared.current.store);
    config.max_transfers = prepared.budget.tftp_transfers;
    config.allow = Some({
        let (site, access) = (prepared.site.clone(), prepared.access.clone());
        Arc::new(move |name: &Path, client: SocketAddr| {
            let site = site.borrow().clone();
            let what = name.display().to_string();
            access
                .check(&site, Some(client.ip()), access::Protocol::Tftp, &what)
                .map_err(|refusal| refusal.to_string())
        })
    });
    config.on_transfer_done = Some({
        let recorder = prepared.recorder.clone();
        Arc::new(move |log: &diskless_tftp::server::TransferLog| {
            recorder.record(BootEvent::Tftp {
                client: log.client.ip(),
                file: log.filename.clone(),
                bytes: log.bytes,
                outcome: recorder::TftpOutcome::from(&log.outcome),
            });
        })
    });
    config.virtual_files = Some({
        let booter = prepared.booter.clone();
        Arc::new(move |name: &Path, client: SocketAddr| {
            use diskless_tftp::server::Virtual;
            let file = diskless_boot::grub::chain_file(name.to_str()?)?;
            Some(match booter.chain_file(file, Some(client.ip()))? {
                booter::ChainAnswer::File(path) => Virtual::File(path.into()),
                booter::ChainAnswer::Text(text) => Virtual::Bytes(text.into_bytes()),
            })
        })
    });
    config
}

/// The admin pages and metrics, fed by the recorder: one task follows it, one serves.
fn spawn_admin(tasks: &mut Tasks, prepared: &Prepared, listener: tokio::net::TcpListener) {
    let (current, recorder) = (&prepared.current, &prepared.recorder);
    let addr = listener.local_addr().ok();
    let state = Arc::new(
        admin::AdminState::new(
            {
                let recorder = recorder.clone();
                Arc::new(move || recorder.published())
            },
            prepared.store.clone(),
            Some(current.interface.clone()),
            (current.mode == diskless_boot::Mode::Full).then(|| current.state.join("leases.json")),
        )
        .with_metrics(prepared.metrics.clone())
        .with_multicast(prepared.multicast.clone())
        .with_names(current.admin_names.clone()),
    );
    if let Some(warning) = addr.and_then(hostcheck::exposure_warning) {
        tracing::warn!("{warning}");
    }
    // Subscribed before the snapshot is taken: nothing falls in between. What earlier runs
    // recorded goes in the lab view, not in this server's counts.
    let updates = recorder.subscribe();
    state.seed(&recorder.snapshot());
    let (following, stopped) = (state.clone(), tasks.stopped());
    tasks.spawn(async move {
        admin::follow(following, updates, stopped).await;
        Ok(())
    });
    let (limits, stopped) = (conn::Limits::admin(&prepared.budget), tasks.stopped());
    tasks.spawn(async move {
        tracing::info!(?addr, "admin pages: dashboard, /metrics");
        admin::serve_within(listener, state, limits, stopped)
            .await
            .map_err(|source| ServerError::Admin { addr, source })
    });
}

/// IPv6 router advertisements. Not fatal: without them iPXE only boots slower, so a failure
/// is a warning and the task waits for the stop signal.
fn spawn_ra(tasks: &mut Tasks, socket: ra::RaSocket, answer: ra::Answer) {
    let (stopped, stopped_too) = (tasks.stopped(), tasks.stopped());
    tasks.spawn(async move {
        if let Err(e) = socket.serve(answer, stopped).await {
            tracing::warn!(error = %e, "IPv6 router advertisements stopped");
            stopped_too.await;
        }
        Ok(())
    });
}

/// HTTP on the boot network: scripts, image files, stage reports.
fn spawn_http(tasks: &mut Tasks, prepared: &Prepared, listener: tokio::net::TcpListener) {
    let (addr, limits) = (prepared.http_addr, conn::Limits::boot(&prepared.budget));
    let (ipxe_dir, ipxe_files) = prepared.ipxe.clone();
    let app = http::router(Arc::new(http::HttpState {
        site: prepared.site.clone(),
        store: prepared.store.clone(),
        recorder: prepared.recorder.clone(),
        boots: prepared.boots.clone(),
        booter: prepared.booter.clone(),
        ipxe_dir,
        ipxe_files,
        access: prepared.access.clone(),
        clients_json: shared_json::SharedJson::default(),
        json_limit: shared_json::JsonLimit::default(),
        multicast: prepared.multicast.clone(),
    }));
    let stopped = tasks.stopped();
    tasks.spawn(async move {
        conn::serve(listener, app, limits, stopped)
            .await
            .map_err(|source| ServerError::Http { addr, source })
    });
}

/// The state directory's client record file.
pub fn clients_file(state: &Path) -> PathBuf {
    state.join("clients.json")
}

/// Before serving the Secure Boot chain: its signed binaries are installed (an error naming
/// the package otherwise), and every image a Secure Boot client may boot has a signed kernel
/// (a warning otherwise: shim would refuse it, and the client would stop at GRUB). Returns
/// what the GRUB network image fetches with, read from its modules: whether UEFI HTTP Boot
/// clients get shim (a warning says why not when they do not).
fn check_secure_boot_chain(site: &Site, store: &Store) -> Result<GrubNet, ServerError> {
    use diskless_boot::grub::{GRUBNET_SIGNED, SHIM_SIGNED};
    for (path, package) in [
        (SHIM_SIGNED, "shim-signed"),
        (GRUBNET_SIGNED, "grub-efi-amd64-signed"),
    ] {
        if !std::path::Path::new(path).is_file() {
            return Err(ServerError::SecureBootMissing { path, package });
        }
    }
    let mut images: Vec<&str> = site.default_image.iter().map(String::as_str).collect();
    images.extend(site.clients.values().filter_map(|c| c.image.as_deref()));
    images.sort_unstable();
    images.dedup();
    for image in images {
        let Ok(manifest) = store.current(image) else {
            continue;
        };
        match store.kernel_signed(&manifest.name, &manifest.version) {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                %image, version = %manifest.version,
                "the image's kernel is not signed: Secure Boot clients cannot boot it (shim \
                 refuses it after GRUB); use a distribution kernel such as Debian's linux-image-amd64"
            ),
            Err(e) => tracing::warn!(
                %image, version = %manifest.version, error = %e,
                "cannot tell whether the image's kernel is signed"
            ),
        }
    }
    Ok(grub_net(site, Path::new(GRUBNET_SIGNED)))
}

/// What the GRUB network image at `path` fetches with (its modules), logged with what it means
/// for UEFI HTTP Boot clients on the Secure Boot chain.
fn grub_net(site: &Site, path: &Path) -> GrubNet {
    let grub = match std::fs::read(path) {
        Ok(image) => GrubNet::of_image(&image).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let grub = grub.unwrap_or_else(|error| {
        tracing::warn!(path = %path.display(), %error, "cannot read the GRUB network image's modules: taken as TFTP only");
        GrubNet::Tftp
    });
    if site.shim_over_http(grub) {
        tracing::info!(path = %path.display(), "Secure Boot: this GRUB has http: UEFI HTTP Boot clients get shim over HTTP");
    } else if grub == GrubNet::Tftp {
        tracing::warn!(
            path = %path.display(),
            "Secure Boot: this GRUB network image has no http module (Debian 12's GRUB 2.06): \
             UEFI HTTP Boot clients get iPXE, which a machine with Secure Boot on refuses; \
             boot them by UEFI PXE, or serve Debian 13's grub-efi-amd64-signed"
        );
    } else {
        tracing::warn!(
            http_port = site.http_port,
            "Secure Boot: GRUB reaches HTTP on port 80 only: UEFI HTTP Boot clients get iPXE, \
             which a machine with Secure Boot on refuses; boot them by UEFI PXE, or set http_port = 80"
        );
    }
    grub
}

#[cfg(test)]
mod tests {
    use super::*;
    use diskless_dhcp::Mac;

    /// The proxy-mode RA is armed by the DHCP hook itself: a subscriber of the recorder's
    /// facts that does not read (the channel full) does not cost a client its answer.
    #[tokio::test]
    async fn an_ipxe_offer_arms_the_ra_even_when_the_facts_are_not_read() {
        let recorder = Recorder::with_records(Default::default(), Default::default());
        let mut stalled = recorder.subscribe();
        let booting = Arc::new(std::sync::Mutex::new(ra::Booting::default()));
        let sink = dhcp_sink(recorder.clone(), Some(booting.clone()));
        let offer = |mac: Mac| DhcpEvent {
            mac,
            kind: diskless_dhcp::ClientKind::Ipxe,
            arch: None,
            port: 67,
            action: EventAction::Offer {
                ip: None,
                file: Some("http://10.0.0.1/boot/x.ipxe".into()),
            },
        };
        let (client, other) = (Mac([2, 0, 0, 0, 0, 1]), Mac([2, 0, 0, 0, 0, 2]));
        // More offers than the fact channel holds, the client's among them.
        for _ in 0..2000 {
            sink(&offer(other));
        }
        sink(&offer(client));
        for _ in 0..2000 {
            sink(&offer(other));
        }
        assert!(matches!(
            stalled.try_recv(),
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_))
        ));
        let now = std::time::Instant::now();
        assert!(booting.lock().unwrap().answer(client, now));
        assert!(
            recorder.get(client).is_some(),
            "and recorded: the table does not drop"
        );
    }

    #[test]
    fn missing_ipxe_binary_names_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let mut site = Site::for_tests("");
        site.store = dir.path().to_path_buf();
        site.ipxe.dir = dir.path().join("nothing");
        let err = install_ipxe_files(&site).unwrap_err();
        assert!(matches!(err, ServerError::IpxeMissing { .. }), "{err}");
        assert!(err.to_string().contains("apt-get install ipxe"), "{err}");
    }

    /// The drain's contract: the first task to fail ends the server with its error, and every
    /// other task is told to stop and joined before `drain` returns.
    #[tokio::test]
    async fn a_failed_task_stops_and_joins_the_others() {
        let mut tasks = Tasks::new();
        let joined = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = tasks.stopped();
        tasks.spawn({
            let joined = joined.clone();
            async move {
                stopped.await;
                joined.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }
        });
        tasks.spawn(async {
            Err(ServerError::Interface {
                interface: "test0".into(),
                message: "gone".into(),
            })
        });
        let result = tasks.drain(std::future::pending()).await;
        assert!(
            matches!(&result, Err(ServerError::Interface { interface, .. }) if interface == "test0"),
            "{result:?}"
        );
        assert!(joined.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn a_missing_host_key_for_accounts_is_named() {
        check_accounts_files(&Site::for_tests("")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, "").unwrap();
        let key = dir.path().join("none.pub");
        let site = Site::for_tests(&format!(
            "[accounts]\npasswd = {passwd:?}\ngroup = {passwd:?}\nssh_host_keys = [{key:?}]\n"
        ));
        let err = check_accounts_files(&site).unwrap_err();
        assert!(err.to_string().contains("none.pub"), "{err}");
        assert!(err.to_string().contains("openssh-server"), "{err}");
    }
}
