//! One `stamp serve` process: the task store, the objects, the worker pool and the HTTP
//! server, started together and stopped together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use stamp_aws::config::AwsConfig;

use crate::api::{Keys, Service};
use crate::db::TaskStore;
use crate::objects::{LocalDir, ObjectStore, S3Store, UrlPolicy};
use crate::pool::{Pool, PoolConfig};
use crate::task::{TaskState, now_millis};
use crate::worker::scratch::Scratch;
use crate::worker::{Limits, Storage};
use crate::{Error, Result};

/// Where objects (sources, exports and the service's snapshots) live.
#[derive(Debug, Clone)]
pub enum Objects {
    /// A local directory: `UserBucket {B, K}` is `DIR/B/K`.
    Dir(PathBuf),
    /// An S3-compatible store: buckets are its buckets; the service keeps its snapshots under
    /// `s3://BUCKET/PREFIX`.
    S3 {
        /// `s3://BUCKET/PREFIX` for the service's own snapshots.
        url: String,
        /// How to reach the store.
        config: Box<AwsConfig>,
    },
}

/// Everything a process needs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// `sqlite:PATH` or `postgres://…`.
    pub db: String,
    /// Objects.
    pub objects: Objects,
    /// The access keys file.
    pub credentials: PathBuf,
    /// Concurrent conversions.
    pub workers: usize,
    /// CPU threads per conversion (0: all cores).
    pub threads: usize,
    /// The stamp image store `stamp://NAME` sources come from.
    pub store: Option<PathBuf>,
    /// API requests per second per tenant (0: no limit).
    pub rate_limit: f64,
    /// Scratch directory.
    pub scratch: PathBuf,
    /// Scratch quota in bytes.
    pub scratch_quota: u64,
    /// Lease length.
    pub lease: Duration,
    /// How long finished tasks are kept.
    pub retention: Duration,
    /// Let URL sources name private addresses (tests, private clouds).
    pub allow_private_urls: bool,
    /// Most bytes per second one conversion reads (none: no limit).
    pub convert_rate: Option<u64>,
    /// TLS certificate chain and private key (PEM files); plain HTTP without.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Prometheus text for `/metrics`.
fn metrics(store: &dyn TaskStore, pool: &Pool) -> String {
    let mut out = String::new();
    out.push_str("# HELP stamp_tasks Tasks by kind and state.\n# TYPE stamp_tasks gauge\n");
    let mut queued = 0;
    match store.counts() {
        Ok(counts) => {
            for (kind, state, n) in counts {
                out.push_str(&format!(
                    "stamp_tasks{{kind=\"{}\",state=\"{}\"}} {n}\n",
                    kind.as_str(),
                    state.as_str()
                ));
                if state == TaskState::Active {
                    queued += n;
                }
            }
        }
        Err(e) => tracing::warn!("metrics: {e}"),
    }
    out.push_str(&format!(
        "# HELP stamp_queue_depth Active tasks (running or waiting).\n# TYPE stamp_queue_depth gauge\nstamp_queue_depth {queued}\n\
         # HELP stamp_scratch_bytes Scratch bytes reserved by running tasks.\n# TYPE stamp_scratch_bytes gauge\nstamp_scratch_bytes {}\n\
         # HELP stamp_scratch_quota_bytes The scratch quota.\n# TYPE stamp_scratch_quota_bytes gauge\nstamp_scratch_quota_bytes {}\n\
         # HELP stamp_bytes_converted_total Bytes converted by tasks this process finished.\n# TYPE stamp_bytes_converted_total counter\nstamp_bytes_converted_total {}\n",
        pool.scratch.in_use(),
        pool.scratch.quota(),
        pool.bytes_converted.load(Ordering::Relaxed)
    ));
    out
}

/// A unique name for this process in leases.
fn owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Threads that answer API requests (tokio's blocking pool): four per core, at least eight.
/// A request holds one only for a few SQLite statements (a write's fsync at most), and a
/// small pool keeps their order first come, first served; with many more, 200 clients on
/// two cores wait longer at the 99th percentile (benches/serve.sh: p99 41 ms with 64, 32 ms
/// with 8).
fn handler_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cores * 4).max(8)
}

/// Runs the service until `stop` is set; `ready` is called with the bound address.
pub fn run(cfg: &NodeConfig, stop: Arc<AtomicBool>, ready: &dyn Fn(SocketAddr)) -> Result<()> {
    let keys = Keys::load(&cfg.credentials)?;
    let store: Arc<dyn TaskStore> = Arc::from(crate::db::open(&cfg.db)?);
    let (objects, storage): (Arc<dyn ObjectStore>, Storage) = match &cfg.objects {
        Objects::Dir(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
            (Arc::new(LocalDir::new(dir)?), Storage::local(dir)?)
        }
        Objects::S3 { url, config } => (Arc::new(S3Store::new(config)), Storage::s3(url, config)?),
    };
    std::fs::create_dir_all(&cfg.scratch).map_err(|e| Error::io("create", &cfg.scratch, e))?;
    let left = crate::worker::clean_scratch(&cfg.scratch)?;
    if left > 0 {
        tracing::info!("removed {left} bytes left in the scratch directory by an earlier run");
    }
    let pool = Pool::new(
        store.clone(),
        objects,
        storage,
        Arc::new(Scratch::new(cfg.scratch_quota)),
        PoolConfig {
            workers: cfg.workers,
            lease: cfg.lease,
            heartbeat: (cfg.lease / 4).max(Duration::from_millis(200)),
            idle: Duration::from_secs(2),
            owner: owner(),
            scratch_dir: cfg.scratch.clone(),
            limits: Limits {
                urls: if cfg.allow_private_urls {
                    UrlPolicy::Any
                } else {
                    UrlPolicy::PublicOnly
                },
                convert_rate: cfg.convert_rate,
                ..Limits::default()
            },
            threads: cfg.threads,
            store: cfg.store.clone(),
        },
    );
    let p = pool.clone();
    let service = Arc::new(
        Service::new(store.clone(), keys)
            .on_change(move || p.notify())
            .rate_limit(cfg.rate_limit),
    );
    let listener = std::net::TcpListener::bind(cfg.listen)
        .map_err(|e| Error::Config(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Config(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let workers = pool.start()?;
    // Finished tasks are kept for the retention time, then purged.
    let purge_store = store.clone();
    let retention = cfg.retention;
    let purge_stop = Arc::new(AtomicBool::new(false));
    let ps = purge_stop.clone();
    let purger = std::thread::spawn(move || {
        let mut waited = Duration::MAX;
        while !ps.load(Ordering::SeqCst) {
            if waited >= Duration::from_secs(600) {
                let before = now_millis() - retention.as_millis() as i64;
                match purge_store.purge(before) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!("purged {n} finished tasks"),
                    Err(e) => tracing::warn!("purge failed: {e}"),
                }
                waited = Duration::ZERO;
            }
            std::thread::sleep(Duration::from_millis(200));
            waited += Duration::from_millis(200);
        }
    });
    let m_store = store.clone();
    let m_pool = pool.clone();
    let metrics_text: crate::server::Metrics = Arc::new(move || metrics(m_store.as_ref(), &m_pool));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(handler_threads())
        .enable_all()
        .build()
        .map_err(|e| Error::Config(format!("cannot start the runtime: {e}")))?;
    tracing::info!(%addr, db = %cfg.db, workers = cfg.workers, "serving");
    ready(addr);
    let tls = cfg.tls.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    let served = rt.block_on(crate::server::serve(
        listener,
        tls,
        service,
        metrics_text,
        async move {
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    ));
    pool.shutdown();
    for w in workers {
        let _ = w.join();
    }
    purge_stop.store(true, Ordering::SeqCst);
    let _ = purger.join();
    served
}
