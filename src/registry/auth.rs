//! The `Authorization` a registry's challenge asks for (Docker's token auth flow).
//!
//! Owns: answering the challenges of `/v2/`: `Bearer` gets a token from the challenge's realm
//! for `repository:<name>:pull` and the challenge's service (`GET` with Basic credentials, or
//! anonymous; an identity token is exchanged by OAuth2's refresh-token grant, `POST`);
//! `Basic` (or no challenge) gets the Basic credentials, if any. It refuses to send credentials
//! to a token realm on another host over plain HTTP. Credentials are taken from
//! `super::credentials` for the registry's host only, and go only in headers or a POST body,
//! never in a URL, an error or a log line.

use base64::Engine as _;
use url::Url;

use super::challenge::Challenge;
use super::client::{authority, error_detail, Client};
use super::credentials::Credential;
use super::retry::{self, status_failure, Step};
use super::{RegistryConfig, RegistryError};
use crate::config::Secret;
use crate::image::normalize_host;

fn basic(username: &str, password: &Secret) -> Secret {
    let raw = format!("{username}:{}", password.expose());
    Secret::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
}

fn token_error(client: &Client, detail: String) -> RegistryError {
    RegistryError::Token {
        reference: client.reference.to_string(),
        registry: client.registry.clone(),
        detail,
    }
}

/// The `Authorization` value for the registry's URLs, given the challenges of `/v2/`.
pub(crate) async fn authorization(
    client: &Client,
    config: &RegistryConfig,
    challenges: &[Challenge],
) -> Result<Option<Secret>, RegistryError> {
    let bearer = challenges.iter().find(|c| c.scheme == "bearer");
    match (bearer, &client.credential) {
        (Some(bearer), credential) => {
            let realm = bearer
                .param("realm")
                .ok_or_else(|| token_error(client, "its Bearer challenge names no realm".into()))?;
            let realm = Url::parse(realm)
                .ok()
                .filter(|u| matches!(u.scheme(), "https" | "http"))
                .ok_or_else(|| {
                    token_error(
                        client,
                        format!("its token realm {realm:?} is not an http(s) URL"),
                    )
                })?;
            if credential.is_some() && realm.scheme() != "https" {
                let same_host = authority(&realm) == authority(&client.base)
                    || normalize_host(&authority(&realm)) == client.registry;
                if !same_host {
                    return Err(RegistryError::InsecureTokenRealm {
                        registry: client.registry.clone(),
                        realm: realm.to_string(),
                    });
                }
            }
            let token = token(
                client,
                config,
                &realm,
                bearer.param("service"),
                credential.as_ref(),
            )
            .await?;
            Ok(Some(Secret::new(format!("Bearer {}", token.expose()))))
        }
        (None, Some(Credential::Basic { username, password })) => {
            Ok(Some(basic(username, password)))
        }
        (None, Some(Credential::IdentityToken(_))) => Err(token_error(
            client,
            "the registry offers no token service for an identity token".into(),
        )),
        (None, None) => Ok(None),
    }
}

/// A registry token from the realm, for pulling the client's repository.
async fn token(
    client: &Client,
    config: &RegistryConfig,
    realm: &Url,
    service: Option<&str>,
    credential: Option<&Credential>,
) -> Result<Secret, RegistryError> {
    let scope = format!(
        "repository:{}:pull",
        client.reference.reference.repository()
    );
    let attempt = move |()| {
        let scope = scope.clone();
        async move {
            let request = match credential {
                Some(Credential::IdentityToken(refresh)) => {
                    let mut form = form_urlencoded::Serializer::new(String::new());
                    form.append_pair("grant_type", "refresh_token");
                    if let Some(service) = service {
                        form.append_pair("service", service);
                    }
                    form.append_pair("scope", &scope);
                    form.append_pair("client_id", "envbox");
                    form.append_pair("refresh_token", refresh.expose());
                    client
                        .http
                        .post(realm.clone())
                        .header(
                            reqwest::header::CONTENT_TYPE,
                            "application/x-www-form-urlencoded",
                        )
                        .body(form.finish())
                }
                other => {
                    let mut url = realm.clone();
                    {
                        let mut query = url.query_pairs_mut();
                        if let Some(service) = service {
                            query.append_pair("service", service);
                        }
                        query.append_pair("scope", &scope);
                    }
                    let request = client.http.get(url);
                    match other {
                        Some(Credential::Basic { username, password }) => request.header(
                            reqwest::header::AUTHORIZATION,
                            basic(username, password).expose(),
                        ),
                        _ => request,
                    }
                }
            };
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) => return client.transport_step(&e, config, ()),
            };
            if let Some(failure) = status_failure(&response) {
                return Step::Retry((), failure);
            }
            if !response.status().is_success() {
                let detail = error_detail(response).await;
                return Step::Fatal(token_error(
                    client,
                    format!("the token service refused: {detail}"),
                ));
            }
            match response.bytes().await {
                Ok(body) => match parse_token(&body) {
                    Some(token) => Step::Done(token),
                    None => Step::Fatal(token_error(
                        client,
                        "the token service's answer has no token".into(),
                    )),
                },
                Err(e) => client.transport_step(&e, config, ()),
            }
        }
    };
    let what = format!("getting a token from {}", authority(realm));
    retry::run(
        config,
        format!("the token service of {}", client.registry),
        (),
        attempt,
        |g| client.gave_up(what, g),
    )
    .await
}

/// The token of a token service's answer (`token`, or OAuth2's `access_token`).
fn parse_token(body: &[u8]) -> Option<Secret> {
    #[derive(serde::Deserialize)]
    struct Answer {
        token: Option<String>,
        access_token: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(body).ok()?;
    answer
        .token
        .or(answer.access_token)
        .filter(|t| !t.is_empty())
        .map(Secret::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_read_from_either_field() {
        let t = |body: &str| parse_token(body.as_bytes()).map(|s| s.expose().to_owned());
        assert_eq!(
            t(r#"{"token":"a","access_token":"a"}"#).as_deref(),
            Some("a")
        );
        assert_eq!(
            t(r#"{"access_token":"b","expires_in":60}"#).as_deref(),
            Some("b")
        );
        assert_eq!(t(r#"{"token":""}"#), None);
        assert_eq!(t("not json"), None);
    }
}
