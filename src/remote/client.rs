//! The connection to a remote: an `object_store` client and the tokio runtime it needs, both
//! private to this module. Every call blocks; nothing async leaves it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::{
    ClientOptions, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, UpdateVersion,
};

use crate::config::{RemoteUrl, Settings};
use crate::exit::{Code, fail};

/// Requests in flight at once while packs move.
pub const PARALLEL: usize = 4;

pub struct Client {
    pub url: RemoteUrl,
    /// Who answers: the endpoint, AWS, or the directory; named in every transfer error.
    pub server: String,
    store: Arc<dyn ObjectStore>,
    prefix: String,
    runtime: tokio::runtime::Runtime,
}

/// A version of an object, for a conditional replace.
pub type Version = Option<UpdateVersion>;

impl Client {
    /// The configured remote, checked to answer before anything moves: exit 2 when none is
    /// configured, exit 3 (one line saying which) when its endpoint cannot be reached, the
    /// credentials are refused or the bucket (directory) does not exist.
    pub fn connect(settings: &Settings) -> Result<Client> {
        let Some(url) = settings.remote.clone() else {
            return Err(fail(
                Code::Usage,
                "no remote is configured; set remote = s3://BUCKET/PREFIX or file:///PATH in [suite_isolation]",
            ));
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (store, prefix, server): (Arc<dyn ObjectStore>, String, String) = match &url {
            RemoteUrl::S3 { bucket, prefix } => {
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    // A dead server fails in seconds, not after the default three minutes.
                    .with_retry(RetryConfig {
                        max_retries: 3,
                        retry_timeout: Duration::from_secs(20),
                        ..RetryConfig::default()
                    })
                    .with_client_options(
                        ClientOptions::new()
                            .with_connect_timeout(Duration::from_secs(5))
                            .with_timeout(Duration::from_secs(120)),
                    );
                if let Some(endpoint) = &settings.remote_endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                if let Some(region) = &settings.remote_region {
                    builder = builder.with_region(region);
                }
                for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
                    if std::env::var_os(var).is_none() {
                        return Err(fail(
                            Code::MissingDependency,
                            format!(
                                "remote {url}: no credentials: {var} is not set (stagesnap takes them from the AWS_* environment variables)"
                            ),
                        ));
                    }
                }
                let server = settings
                    .remote_endpoint
                    .clone()
                    .or_else(|| std::env::var("AWS_ENDPOINT").ok())
                    .unwrap_or_else(|| "AWS S3".into());
                let store = builder
                    .build()
                    .map_err(|e| fail(Code::Usage, format!("remote {url}: {e}")))?;
                (Arc::new(store), prefix.clone(), server)
            }
            RemoteUrl::File(dir) => {
                if !dir.is_dir() {
                    return Err(fail(
                        Code::MissingDependency,
                        format!(
                            "remote {url}: directory {} does not exist; create it or fix remote",
                            dir.display()
                        ),
                    ));
                }
                let store = LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| fail(Code::MissingDependency, format!("remote {url}: {e}")))?;
                (Arc::new(store), String::new(), dir.display().to_string())
            }
        };
        let client = Client {
            url,
            server,
            store,
            prefix,
            runtime,
        };
        client.probe()?;
        Ok(client)
    }

    /// One listing, to tell an absent service, refused credentials or a missing bucket
    /// apart before any transfer.
    fn probe(&self) -> Result<()> {
        let key = self.key(super::format::SNAPSHOTS, "");
        let listed = self
            .runtime
            .block_on(self.store.list_with_delimiter(Some(&key)));
        let Err(e) = listed else { return Ok(()) };
        let text = e.to_string();
        let why = if text.contains("NoSuchBucket") {
            let RemoteUrl::S3 { bucket, .. } = &self.url else {
                unreachable!("only S3 has buckets")
            };
            format!(
                "bucket {bucket} does not exist at {}; create it or fix remote",
                self.server
            )
        } else if matches!(
            e,
            object_store::Error::Unauthenticated { .. }
                | object_store::Error::PermissionDenied { .. }
        ) || [
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
            "403",
        ]
        .iter()
        .any(|s| text.contains(s))
        {
            format!(
                "{} refused the credentials (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY): {}",
                self.server,
                one_line(&text)
            )
        } else {
            format!("{} cannot be reached: {}", self.server, one_line(&text))
        };
        Err(fail(
            Code::MissingDependency,
            format!("remote {}: {why}", self.url),
        ))
    }

    /// `dir/name` under the remote's prefix.
    pub fn key(&self, dir: &str, name: &str) -> Key {
        let parts = [self.prefix.as_str(), dir, name];
        Key::from(
            parts
                .iter()
                .filter(|p| !p.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join("/"),
        )
    }

    /// The last part of `key`: a snapshot's name, an object's digest.
    pub fn base_name(key: &Key) -> String {
        key.filename().unwrap_or_default().to_string()
    }

    /// A transfer that failed: exit 1, naming the server.
    pub fn failed(&self, what: &str, e: impl std::fmt::Display) -> anyhow::Error {
        fail(
            Code::Failure,
            format!(
                "{what} failed: {} ({}): {}",
                self.url,
                self.server,
                one_line(&e.to_string())
            ),
        )
    }

    /// The object at `key`, None when there is none.
    pub fn get(&self, key: &Key) -> Result<Option<Vec<u8>>> {
        self.runtime.block_on(async {
            match self.store.get(key).await {
                Ok(got) => got
                    .bytes()
                    .await
                    // Without a copy: the body is one buffer of its own.
                    .map(|b| Some(Vec::from(b)))
                    .map_err(|e| self.failed(&format!("reading {key}"), e)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.failed(&format!("reading {key}"), e)),
            }
        })
    }

    /// Bytes `range` of the object at `key`.
    pub fn get_range(&self, key: &Key, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        self.runtime
            .block_on(self.store.get_range(key, range))
            .map(|b| b.to_vec())
            .map_err(|e| self.failed(&format!("reading {key}"), e))
    }

    /// Every object under `dir`.
    pub fn list(&self, dir: &str) -> Result<Vec<ObjectMeta>> {
        let key = self.key(dir, "");
        self.runtime
            .block_on(self.store.list(Some(&key)).try_collect::<Vec<_>>())
            .map_err(|e| self.failed(&format!("listing {key}"), e))
    }

    /// Writes a content-named object (its name is its digest, so any copy there is it).
    pub fn put(&self, key: &Key, bytes: Vec<u8>) -> Result<()> {
        self.runtime
            .block_on(self.store.put(key, PutPayload::from(bytes)))
            .map(drop)
            .map_err(|e| self.failed(&format!("writing {key}"), e))
    }

    /// Writes `key` only if it is still the version `seen` (None: only if there is none):
    /// Ok(false) when another writer got there first. A store that cannot replace
    /// conditionally (a directory) replaces atomically.
    pub fn put_if(&self, key: &Key, bytes: Vec<u8>, seen: Version) -> Result<bool> {
        let mode = match seen {
            None => PutMode::Create,
            Some(version) => PutMode::Update(version),
        };
        let conditional = self.runtime.block_on(self.store.put_opts(
            key,
            PutPayload::from(bytes.clone()),
            PutOptions::from(mode),
        ));
        match conditional {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(false),
            Err(object_store::Error::NotImplemented { .. }) => {
                self.put(key, bytes)?;
                Ok(true)
            }
            Err(e) => Err(self.failed(&format!("writing {key}"), e)),
        }
    }

    pub fn delete(&self, key: &Key) -> Result<()> {
        match self.runtime.block_on(self.store.delete(key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed(&format!("deleting {key}"), e)),
        }
    }

    /// The version of the object at `key`, None when there is none.
    pub fn version(&self, key: &Key) -> Result<Version> {
        match self.runtime.block_on(self.store.head(key)) {
            Ok(meta) => Ok(Some(UpdateVersion {
                e_tag: meta.e_tag,
                version: meta.version,
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failed(&format!("reading {key}"), e)),
        }
    }

    /// Whether an object is at `key`.
    pub fn exists(&self, key: &Key) -> Result<bool> {
        Ok(self.version(key)?.is_some())
    }

    /// Runs `jobs` (each a blocking call on this client) [`PARALLEL`] at a time, in
    /// threads; the first error wins.
    pub fn each<T: Send>(
        &self,
        jobs: Vec<T>,
        job: impl Fn(&Client, T) -> Result<()> + Sync,
    ) -> Result<()> {
        let queue = std::sync::Mutex::new(jobs.into_iter());
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..PARALLEL)
                .map(|_| {
                    s.spawn(|| {
                        loop {
                            let next = queue.lock().expect("queue lock").next();
                            let Some(item) = next else { return Ok(()) };
                            crate::signals::check()?;
                            job(self, item)?;
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("transfer threads do not panic"))
                .collect::<Result<Vec<()>>>()
                .map(drop)
        })
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
