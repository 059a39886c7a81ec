//! Blob transfers: one verified blob from the registry into the store.
//!
//! Owns: the GET of a blob with the registry's `Authorization` (never sent elsewhere: foreign
//! layer URLs get none, and reqwest drops it on redirects to another host), resuming with
//! `Range` after a dropped connection, retrying 5xx, 429 (honouring `Retry-After`) and transport
//! errors within their budgets (`super::retry::run`), re-authenticating once on 401, never retrying
//! 403/404 (a 404 at a foreign URL moves on to the next location). Bytes are hashed
//! and counted as they are written (off the async threads, while the next are received: see
//! `super::sink`); the store commits only a blob whose digest and size match. One process of a
//! volume fetches a blob at a time (`BlobStore::claim`); a waiter finds it stored. It never
//! decides which blobs to fetch.

use futures_util::StreamExt;
use tokio::sync::SemaphorePermit;

use super::client::Client;
use super::progress::Progress;
use super::retry::{self, chain, status_failure, Failure, Step};
use super::sink::Sink;
use super::{RegistryConfig, RegistryError};
use crate::cache::{BlobStore, BlobWriter, CacheError};
use crate::config::Secret;
use crate::digest::Digest;

/// A blob to fetch.
#[derive(Debug, Clone)]
pub(crate) struct BlobRequest {
    pub digest: Digest,
    pub size: u64,
    /// For messages: "config", "layer 2 of 5".
    pub what: String,
    /// Alternate locations (foreign layers), fetched without credentials.
    pub urls: Vec<String>,
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
}

fn store_error(t: &Client, digest: &Digest, source: CacheError) -> RegistryError {
    RegistryError::Store {
        reference: t.reference.to_string(),
        digest: digest.to_string(),
        source,
    }
}

/// The outcome of one GET that did not end the transfer.
enum Got {
    Complete(BlobWriter),
    /// 404 at a location that has another after it.
    NotHere(BlobWriter),
    /// 401 from the registry with the `Authorization` sent (a token may have expired).
    Unauthorized(BlobWriter, Option<Secret>, RegistryError),
    Failed(BlobWriter, Failure),
}

/// Where a blob is fetched from: alternate URLs (foreign layers) first and without
/// credentials, then the registry itself with them.
#[derive(Debug, Clone, Copy)]
struct Location<'a> {
    url: &'a str,
    with_auth: bool,
    /// Another location follows: a 404 here moves on instead of failing.
    has_next: bool,
}

/// The start of a `Content-Range: bytes START-END/TOTAL` header.
fn range_start(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let value = headers.get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    value
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// One GET, streaming into `writer` from where it stands.
async fn get_once(
    t: &Client,
    config: &RegistryConfig,
    Location {
        url,
        with_auth,
        has_next,
    }: Location<'_>,
    request: &BlobRequest,
    store: &BlobStore,
    mut writer: BlobWriter,
    progress: &Progress,
) -> Result<Got, RegistryError> {
    let offset = writer.written();
    let mut builder = t.http.get(url);
    let authorization = with_auth.then(|| t.authorization()).flatten();
    if let Some(header) = &authorization {
        builder = builder.header(reqwest::header::AUTHORIZATION, header.expose());
    }
    if offset > 0 {
        builder = builder.header(reqwest::header::RANGE, format!("bytes={offset}-"));
    }
    let response = match builder.send().await {
        Ok(r) => r,
        Err(e) => {
            return match Failure::of(&e, config) {
                Some(failure) => Ok(Got::Failed(writer, failure)),
                None => Err(t.fatal(&e)),
            }
        }
    };
    if let Some(failure) = status_failure(&response) {
        return Ok(Got::Failed(writer, failure));
    }
    let status = response.status().as_u16();
    let detail = format!("{status} from {url}");
    let restart = match status {
        200 => offset > 0,
        206 => range_start(response.headers()) != Some(offset),
        _ => false,
    };
    match status {
        200 | 206 if restart => {
            // The server ignored Range or answered another one: start over.
            drop(writer);
            writer = store
                .writer(&request.digest, request.size)
                .map_err(|e| store_error(t, &request.digest, e))?;
            progress.restart(&request.digest);
        }
        200 | 206 => {}
        401 if with_auth => {
            let error = t.unauthorized(detail);
            return Ok(Got::Unauthorized(writer, authorization, error));
        }
        403 => {
            return Err(RegistryError::Denied {
                reference: t.reference.to_string(),
                detail,
            })
        }
        404 if has_next => return Ok(Got::NotHere(writer)),
        404 => {
            return Err(RegistryError::NotFound {
                reference: t.reference.to_string(),
                detail: format!("{} ({}) is missing: {detail}", request.what, request.digest),
            })
        }
        _ => return Err(t.protocol(detail)),
    }
    let mut stream = response.bytes_stream();
    // From 0 when the server started over.
    let mut received = writer.written();
    let mut sink = Sink::new(writer);
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let writer = sink
                    .finish()
                    .await
                    .map_err(|e| store_error(t, &request.digest, e))?;
                return Ok(Got::Failed(writer, Failure::Broken(chain(&e))));
            }
        };
        received += chunk.len() as u64;
        if received > request.size {
            // The writer goes (and its staging file with it) before the error is told.
            drop(sink.finish().await);
            let mismatch = CacheError::SizeMismatch {
                digest: request.digest.clone(),
                expected: request.size,
                actual: received,
            };
            return Err(store_error(t, &request.digest, mismatch));
        }
        progress.advance(&request.digest, chunk.len() as u64);
        sink.push(chunk)
            .await
            .map_err(|e| store_error(t, &request.digest, e))?;
    }
    let writer = sink
        .finish()
        .await
        .map_err(|e| store_error(t, &request.digest, e))?;
    if writer.written() < request.size {
        let detail = format!(
            "connection closed after {} of {} bytes",
            writer.written(),
            request.size
        );
        return Ok(Got::Failed(writer, Failure::Broken(detail)));
    }
    Ok(Got::Complete(writer))
}

/// What one attempt of a transfer hands to the next.
struct Transfer {
    writer: BlobWriter,
    /// Index into the locations tried in turn.
    location: usize,
    reauthenticated: bool,
}

/// Fetches one blob into the store, unless it is there already. `started` is called once
/// its writer exists, before the first byte is asked for: from then on the blob can be
/// followed as it arrives (`BlobStore::follow`). `slot` (a transfer slot) is let go once every
/// byte is in, before the commit, which may wait for a follower's digest check. A 401 from the
/// registry re-authenticates once (a token that expired during a long pull).
pub(crate) async fn fetch_blob(
    client: &Client,
    config: &RegistryConfig,
    store: &BlobStore,
    request: &BlobRequest,
    progress: &Progress,
    started: &(dyn Fn(&BlobRequest) + Sync),
    slot: SemaphorePermit<'_>,
) -> Result<(), RegistryError> {
    if store.size_of(&request.digest) == Some(request.size) {
        progress.cached(&request.digest);
        return Ok(());
    }
    // One process of the volume fetches it; the others wait, then find it stored.
    let claim = {
        let (store, digest, what) = (store.clone(), request.digest.clone(), request.what.clone());
        blocking(move || store.claim(&digest, &what)).await
    };
    let claim = claim.map_err(|e| store_error(client, &request.digest, e))?;
    if claim.waited && store.size_of(&request.digest) == Some(request.size) {
        progress.cached(&request.digest);
        return Ok(());
    }
    let registry_url = client.blob_url(&request.digest).to_string();
    let mut locations: Vec<Location> = request
        .urls
        .iter()
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
        .map(|url| Location {
            url,
            with_auth: false,
            has_next: true,
        })
        .collect();
    locations.push(Location {
        url: &registry_url,
        with_auth: true,
        has_next: false,
    });
    let locations = &locations;
    let writer = store
        .writer(&request.digest, request.size)
        .map_err(|e| store_error(client, &request.digest, e))?;
    started(request);
    let first = Transfer {
        writer,
        location: 0,
        reauthenticated: false,
    };
    let attempt = move |mut t: Transfer| async move {
        let location = locations[t.location.min(locations.len() - 1)];
        match get_once(client, config, location, request, store, t.writer, progress).await {
            Err(error) => Step::Fatal(error),
            Ok(Got::Complete(done)) => Step::Done(done),
            Ok(Got::NotHere(writer)) => Step::Again(Transfer {
                writer,
                location: t.location + 1,
                ..t
            }),
            Ok(Got::Failed(writer, failure)) => Step::Retry(Transfer { writer, ..t }, failure),
            Ok(Got::Unauthorized(writer, sent, error)) => {
                if t.reauthenticated {
                    return Step::Fatal(error);
                }
                if let Err(error) = client.reauthenticate(config, sent.as_ref()).await {
                    return Step::Fatal(error);
                }
                t.writer = writer;
                t.reauthenticated = true;
                Step::Again(t)
            }
        }
    };
    let what = format!("downloading {} ({})", request.what, request.digest);
    let subject = format!("{} of {}", request.what, client.reference);
    let done = retry::run(config, subject, first, attempt, |g| client.gave_up(what, g)).await?;
    drop(slot);
    blocking(move || done.commit())
        .await
        .map(|_| ())
        .map_err(|e| store_error(client, &request.digest, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_start() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(range_start(&h), None);
        h.insert(
            reqwest::header::CONTENT_RANGE,
            "bytes 1024-2047/4096".parse().unwrap(),
        );
        assert_eq!(range_start(&h), Some(1024));
        h.insert(
            reqwest::header::CONTENT_RANGE,
            "bytes */4096".parse().unwrap(),
        );
        assert_eq!(range_start(&h), None);
    }
}
