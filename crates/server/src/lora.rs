//! Adapters served next to the base model: the registry of LoRA adapters a request can
//! select by name (its `model` field, vLLM's convention), loaded at startup or at run time.
//!
//! A request holds an `Arc` of its [`ServedAdapter`] from the moment it is accepted until
//! its job ends; unloading removes the name first (new requests get 404) and then waits
//! until it holds the last reference, so running requests always finish.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use verity_engine::LoraSet;
use verity_model::Adapter;

use crate::metrics::{LoraCounters, Metrics};

/// Reads an adapter and binds it to the served base, returning it with the root digest of
/// its path; the error is one line ("PATH: problem"). Supplied by the binary, which knows
/// how to hash.
pub type AdapterLoader = Arc<dyn Fn(&Path) -> Result<(Adapter, String), String> + Send + Sync>;

/// An adapter loaded before serving starts (`verity serve --lora NAME=PATH[:SCALE]`).
pub struct NewAdapter {
    pub name: String,
    pub path: PathBuf,
    /// OMS root digest of `path`.
    pub digest: String,
    pub adapter: Arc<Adapter>,
    /// Multiplies the adapter's own alpha/r scale.
    pub scale: f32,
}

/// One adapter a request can name.
pub struct ServedAdapter {
    pub name: String,
    pub path: PathBuf,
    pub digest: String,
    /// What the engine runs with: pointer identity keeps cached prefixes per adapter.
    pub set: Arc<LoraSet>,
    pub counters: Arc<LoraCounters>,
}

impl std::fmt::Debug for ServedAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedAdapter")
            .field("name", &self.name)
            .field("path", &self.path)
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    served: BTreeMap<String, Arc<ServedAdapter>>,
    /// Names being loaded now: a second load of the same name is refused at once.
    loading: BTreeSet<String>,
}

/// Why a name cannot be added.
#[derive(Debug)]
pub enum AddError {
    /// The name is malformed or is one of the base model's names.
    BadName(String),
    Duplicate(String),
}

impl std::fmt::Display for AddError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddError::BadName(m) => f.write_str(m),
            AddError::Duplicate(n) => write!(f, "an adapter named '{n}' is already loaded"),
        }
    }
}

/// The adapters being served, by name.
pub struct Registry {
    inner: Mutex<Inner>,
    loader: Option<AdapterLoader>,
    /// Names that select the base model; no adapter may take one.
    base_names: Vec<String>,
    metrics: Arc<Metrics>,
    /// Bumped when an unload completes, so the scheduler lets go of the adapter's caches.
    pub epoch: AtomicU64,
}

/// Longest adapter name accepted.
const MAX_NAME: usize = 128;

impl Registry {
    pub fn new(
        loader: Option<AdapterLoader>,
        base_names: Vec<String>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Registry {
            inner: Mutex::new(Inner::default()),
            loader,
            base_names,
            metrics,
            epoch: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `name` selects the base model.
    pub fn is_base(&self, name: &str) -> bool {
        self.base_names.iter().any(|b| b.eq_ignore_ascii_case(name))
    }

    /// The adapter called `name`, if one is served.
    pub fn get(&self, name: &str) -> Option<Arc<ServedAdapter>> {
        self.lock().served.get(name).cloned()
    }

    /// Every served adapter, by name.
    pub fn list(&self) -> Vec<Arc<ServedAdapter>> {
        self.lock().served.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().served.len()
    }

    /// Whether `set` belongs to a served adapter (caches holding any other set are stale).
    pub fn serves(&self, set: &Arc<LoraSet>) -> bool {
        self.lock()
            .served
            .values()
            .any(|a| Arc::ptr_eq(&a.set, set))
    }

    fn check_name(&self, name: &str) -> Result<(), AddError> {
        if name.is_empty() || name.chars().count() > MAX_NAME {
            return Err(AddError::BadName(format!(
                "an adapter name must have 1 to {MAX_NAME} characters"
            )));
        }
        if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(AddError::BadName(
                "an adapter name may not contain spaces or control characters".into(),
            ));
        }
        if self.is_base(name) {
            let shown: String = name.chars().take(64).collect();
            return Err(AddError::BadName(format!(
                "'{shown}' names the base model; choose another adapter name"
            )));
        }
        Ok(())
    }

    /// Serve an adapter loaded at startup.
    pub fn insert(&self, a: NewAdapter) -> Result<(), AddError> {
        self.check_name(&a.name)?;
        let mut inner = self.lock();
        if inner.served.contains_key(&a.name) {
            return Err(AddError::Duplicate(a.name));
        }
        let served = self.served(a.name.clone(), a.path, a.digest, a.adapter, a.scale);
        inner.served.insert(a.name, Arc::new(served));
        Ok(())
    }

    fn served(
        &self,
        name: String,
        path: PathBuf,
        digest: String,
        adapter: Arc<Adapter>,
        scale: f32,
    ) -> ServedAdapter {
        ServedAdapter {
            counters: self.metrics.lora_counters(&name),
            set: LoraSet::new(vec![(adapter, scale)]),
            name,
            path,
            digest,
        }
    }

    /// Reserve `name` for a load in progress; the reservation ends when the guard drops.
    pub fn reserve(self: &Arc<Self>, name: &str) -> Result<Reservation, AddError> {
        self.check_name(name)?;
        let mut inner = self.lock();
        if inner.served.contains_key(name) || inner.loading.contains(name) {
            return Err(AddError::Duplicate(name.to_string()));
        }
        inner.loading.insert(name.to_string());
        Ok(Reservation {
            registry: self.clone(),
            name: name.to_string(),
        })
    }

    /// The loader adapters given at run time go through, if the server has one.
    pub fn loader(&self) -> Option<AdapterLoader> {
        self.loader.clone()
    }

    /// Stop serving `name`: new requests for it fail from now on; returns once every
    /// request that was using it has finished. `None` if no such adapter is served.
    pub async fn unload(self: &Arc<Self>, name: &str) -> Option<()> {
        let adapter = self.lock().served.remove(name)?;
        let registry = self.clone();
        // A task of its own, so that the caches are released even if the client leaves.
        let wait = tokio::spawn(async move {
            // Each accepted request holds a clone until its job ends; unloads are rare, so
            // a short poll is simpler than a notification per job.
            while Arc::strong_count(&adapter) > 1 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            registry.epoch.fetch_add(1, Ordering::SeqCst);
        });
        let _ = wait.await;
        Some(())
    }
}

/// A name held for an adapter being loaded.
pub struct Reservation {
    registry: Arc<Registry>,
    name: String,
}

impl Reservation {
    /// Serve the loaded adapter under the reserved name.
    pub fn commit(self, path: PathBuf, digest: String, adapter: Adapter) {
        let served = self
            .registry
            .served(self.name.clone(), path, digest, Arc::new(adapter), 1.0);
        self.registry
            .lock()
            .served
            .insert(self.name.clone(), Arc::new(served));
        // Drop removes the name from `loading`.
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.registry.lock().loading.remove(&self.name);
    }
}
