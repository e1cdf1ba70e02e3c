//! The pages keyward serves to people (SPEC §14): sign-in with a password or at an OpenID
//! provider, sign-out, and an account page for one's tokens, API keys and signature keys.
//!
//! A room of its own that decides nothing itself: every sign-in, listing and change is an
//! admin API call made in-process ([`AdminApi::call`]) with the browser's own credentials — the
//! password typed into the form, or the `token` cookie — so the same authentication,
//! throttles, rate limits, guard, handlers and audit records apply as to `/.TOKEN/` and
//! `/authentication/…`. What this room adds is what a browser needs: HTML, CSRF tokens,
//! redirects that stay on the origin, and the OpenID Connect flow.

pub mod csrf;
pub mod form;
pub mod oidc;
pub mod page;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use form::{query_value, Form};
use http::Method;
use keyward_admin::{AdminApi, Answer};
use keyward_auth::token::{self, CookieToken};
use keyward_auth::AuthMethod;
use keyward_http::browser::{safe_return_path, sign_in_location};
use keyward_http::ctx::RequestCtx;
use keyward_store::{AuditEvent, Db, DirectoryLogin, UserSource};
use page::{Chrome, Section};
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use serde_json::{json, Value};
use std::sync::Arc;

pub const SIGN_IN_PATH: &str = keyward_http::browser::SIGN_IN_PATH;
pub const SIGN_OUT_PATH: &str = "/.keyward/sign-out";
pub const ACCOUNT_PATH: &str = "/.keyward/account";
pub use oidc::{CALLBACK_PATH, START_PATH};

/// The one message a failed password sign-in gets, whatever failed (SPEC §5: no cause named).
pub const WRONG_CREDENTIALS: &str = "That name, password or code is not right.";

/// How the in-process admin call proves who it is for.
enum Credentials<'a> {
    /// The name and password (and TOTP code) typed into the sign-in form.
    Password {
        name: &'a str,
        password: &'a str,
        code: Option<&'a str>,
    },
    /// The browser's own cookies (its `token`).
    Cookie,
}

/// The browser pages: a [`keyward_http::service::LocalService`] the proxy hands `/.keyward/…`.
pub struct BrowserPages {
    admin: Arc<AdminApi>,
    db: Db,
    oidc: Option<oidc::Provider>,
}

impl BrowserPages {
    pub fn new(
        admin: Arc<AdminApi>,
        db: Db,
        oidc: Option<keyward_config::OidcSettings>,
    ) -> Result<BrowserPages, String> {
        Ok(BrowserPages {
            admin,
            db,
            oidc: oidc.map(oidc::Provider::new).transpose()?,
        })
    }

    async fn route(&self, session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<()> {
        let path = ctx.target.as_ref().map_or("", |t| t.path()).to_owned();
        let method = session.req_header().method.clone();
        let visit = Visit::of(session.req_header(), ctx);
        match (path.as_str(), method) {
            (page::STYLESHEET_PATH, Method::GET | Method::HEAD) => {
                page::stylesheet(session, &visit.request_id).await
            }
            (SIGN_IN_PATH, Method::GET | Method::HEAD) => {
                let rd = query_value(session.req_header().uri.query(), "rd");
                let rd = safe_return_path(rd.as_deref());
                self.sign_in_form(session, &visit, &rd, "", None, 200).await
            }
            (SIGN_IN_PATH, Method::POST) => self.sign_in(session, ctx, &visit).await,
            (SIGN_OUT_PATH, Method::POST) => self.sign_out(session, ctx, &visit).await,
            (ACCOUNT_PATH, Method::GET | Method::HEAD) => {
                let done = query_value(session.req_header().uri.query(), "done");
                let note = done.as_deref().and_then(note_for);
                self.account(session, ctx, &visit, note, None, None, 200)
                    .await
            }
            (path, Method::POST) if path.starts_with("/.keyward/account/") => {
                self.account_action(session, ctx, &visit, path).await
            }
            (START_PATH, Method::GET) if self.oidc.is_some() => {
                self.oidc_start(session, &visit).await
            }
            (CALLBACK_PATH, Method::GET) if self.oidc.is_some() => {
                self.oidc_callback(session, ctx, &visit).await
            }
            (
                page::STYLESHEET_PATH
                | SIGN_IN_PATH
                | SIGN_OUT_PATH
                | ACCOUNT_PATH
                | "/.keyward/account/keys"
                | "/.keyward/account/keys/roll"
                | "/.keyward/account/keys/revoke"
                | "/.keyward/account/tokens/delete"
                | "/.keyward/account/signatures/delete",
                _,
            ) => {
                self.message(
                    session,
                    &visit,
                    405,
                    "Not allowed",
                    "This page does not take that method.",
                    None,
                )
                .await
            }
            _ => {
                self.message(
                    session,
                    &visit,
                    404,
                    "Not found",
                    "There is no such page.",
                    None,
                )
                .await
            }
        }
    }

    fn chrome<'a>(&self, visit: &'a Visit) -> Chrome<'a> {
        Chrome {
            title: visit.title.as_str(),
        }
    }

    /// The sign-in form, with a CSRF token (the browser's, or a new one it is given).
    async fn sign_in_form(
        &self,
        session: &mut Session,
        visit: &Visit,
        rd: &str,
        name: &str,
        error: Option<&str>,
        status: u16,
    ) -> pingora::Result<()> {
        let (csrf, cookies) = visit.csrf_for_form();
        let oidc = self.oidc.as_ref().map(|p| {
            let rd: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
            (
                p.settings().display_name.as_str(),
                format!("{START_PATH}?rd={rd}"),
            )
        });
        let html = render(&page::SignIn {
            chrome: self.chrome(visit),
            csrf: &csrf,
            rd,
            name,
            error,
            oidc,
        });
        page::send(session, status, html, &visit.request_id, &cookies).await
    }

    async fn message(
        &self,
        session: &mut Session,
        visit: &Visit,
        status: u16,
        heading: &str,
        text: &str,
        link: Option<(&str, &str)>,
    ) -> pingora::Result<()> {
        let html = render(&page::Message {
            chrome: self.chrome(visit),
            heading,
            text,
            link,
        });
        page::send(session, status, html, &visit.request_id, &[]).await
    }

    /// A form post's body, when it is a form whose CSRF token matches the browser's cookie.
    async fn checked_form(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        visit: &Visit,
    ) -> pingora::Result<Option<Form>> {
        let body = match keyward_admin::read_body(session, ctx.body_deadline).await {
            Ok(body) => body,
            Err(_) => {
                self.message(
                    session,
                    visit,
                    400,
                    "Bad request",
                    "The form could not be read.",
                    None,
                )
                .await?;
                return Ok(None);
            }
        };
        let content_type = session
            .req_header()
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let form = Form::parse(content_type, &body);
        let csrf_ok = form
            .as_ref()
            .is_some_and(|f| csrf::matches(visit.csrf.as_deref(), f.get("csrf")));
        if !csrf_ok {
            // Another site's post (it cannot know the token), or a page older than the cookie.
            self.message(
                session,
                visit,
                403,
                "This form has expired",
                "The form was not sent from this site's page, or the page is too old. Go back, reload it and try again.",
                Some((SIGN_IN_PATH, "Sign in")),
            )
            .await?;
            return Ok(None);
        }
        Ok(form)
    }

    /// `POST /.keyward/sign-in`: mints a token exactly as `POST /.TOKEN/` with Basic does
    /// (it *is* that call), sets its cookie and returns to `rd`.
    async fn sign_in(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        visit: &Visit,
    ) -> pingora::Result<()> {
        let Some(form) = self.checked_form(session, ctx, visit).await? else {
            return Ok(());
        };
        let rd = safe_return_path(form.get("rd")).into_owned();
        let name = form.get("name").unwrap_or("").trim().to_owned();
        let password = form.get("password").unwrap_or("");
        // An authenticator code is six digits (spaces, as some apps show it, are dropped);
        // anything else is a wrong code — and never reaches a header.
        let code: Option<String> = form.text("totp").map(|c| c.replace(' ', ""));
        if code
            .as_deref()
            .is_some_and(|c| c.len() != 6 || !c.bytes().all(|b| b.is_ascii_digit()))
        {
            return self
                .sign_in_form(session, visit, &rd, &name, Some(WRONG_CREDENTIALS), 401)
                .await;
        }
        let code = code.as_deref();
        if name.is_empty() || password.is_empty() {
            return self
                .sign_in_form(
                    session,
                    visit,
                    &rd,
                    &name,
                    Some("Enter your name and password."),
                    400,
                )
                .await;
        }
        let credentials = Credentials::Password {
            name: &name,
            password,
            code,
        };
        let request = admin_request(
            session.req_header(),
            Method::POST,
            "/.TOKEN/",
            &credentials,
            false,
        )?;
        let answer = self.admin.call(&request, Vec::new(), ctx).await;
        match (answer.status, answer.header("set-cookie")) {
            (201, Some(cookie)) => {
                let cookies = [cookie.to_owned()];
                page::redirect(session, &rd, &visit.request_id, &cookies).await
            }
            (status, _) => {
                let error = match status {
                    401 => WRONG_CREDENTIALS.to_owned(),
                    429 => match answer.header("retry-after") {
                        Some(secs) => format!("Too many attempts. Try again in {secs} seconds."),
                        None => "Too many attempts. Try again later.".to_owned(),
                    },
                    403 => "This account cannot sign in here.".to_owned(),
                    503 => "Signing in is not possible right now. Try again shortly.".to_owned(),
                    _ => "Signing in did not work. Try again.".to_owned(),
                };
                self.sign_in_form(session, visit, &rd, &name, Some(&error), status)
                    .await
            }
        }
    }

    /// `POST /.keyward/sign-out`: the token deletes itself (`DELETE /.TOKEN/<token>`, the
    /// Swarm gateway's logout), the cookie is cleared, and a signed-out page follows.
    async fn sign_out(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        visit: &Visit,
    ) -> pingora::Result<()> {
        if self.checked_form(session, ctx, visit).await?.is_none() {
            return Ok(());
        }
        let token = match token::find_cookie(&session.req_header().headers) {
            CookieToken::Present(token) => Some(token.to_owned()),
            _ => None,
        };
        if let Some(token) = token {
            let path = format!("/.TOKEN/{token}");
            let request = admin_request(
                session.req_header(),
                Method::DELETE,
                &path,
                &Credentials::Cookie,
                false,
            )?;
            let answer = self.admin.call(&request, Vec::new(), ctx).await;
            match answer.status {
                200 => {}
                // Already gone (expired, deleted elsewhere: the cookie no longer
                // authenticates): signed out all the same.
                401 | 404 => tracing::debug!(
                    status = answer.status,
                    "sign-out: the token was already gone"
                ),
                // Refused or undecided (a limit, the store away): the token still works, so
                // the page must not say otherwise; the cookie stays for another try.
                status => {
                    tracing::info!(status, "sign-out: the token could not be deleted");
                    return self
                        .message(
                            session,
                            visit,
                            status,
                            "Not signed out",
                            "Your session could not be ended right now, and it still works. Try again shortly.",
                            Some((ACCOUNT_PATH, "Back to your account")),
                        )
                        .await;
                }
            }
        }
        let html = render(&page::SignedOut {
            chrome: self.chrome(visit),
        });
        let cookies = [token::EXPIRE_COOKIE.to_owned()];
        page::send(session, 200, html, &visit.request_id, &cookies).await
    }

    /// `GET /.keyward/account` (and the page again after an action): what the admin API shows
    /// this browser's token about its owner.
    #[allow(clippy::too_many_arguments)]
    async fn account(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        visit: &Visit,
        note: Option<&str>,
        error: Option<String>,
        new_key: Option<String>,
        status: u16,
    ) -> pingora::Result<()> {
        let header = session.req_header().clone();
        let own_token = match token::find_cookie(&header.headers) {
            CookieToken::Present(token) => token.to_owned(),
            _ => return self.to_sign_in(session, visit, ACCOUNT_PATH).await,
        };
        let tokens = self.admin_get(&header, "/.TOKEN/", ctx).await?;
        if tokens.status == 401 {
            return self.to_sign_in(session, visit, ACCOUNT_PATH).await;
        }
        let Some(principal) = ctx.principal.clone() else {
            return self.to_sign_in(session, visit, ACCOUNT_PATH).await;
        };
        let own_name = self.admin.token_name(&own_token);
        let tokens = section(&tokens, |body| {
            body.as_array()
                .into_iter()
                .flatten()
                .map(|t| page::TokenRow {
                    name: text(&t["name"]),
                    domain: text(&t["x_token_domain_meta"]),
                    created: text(&t["last_modified"]),
                    source: t["x_custom_meta_source"].as_str().unwrap_or("—").to_owned(),
                    current: t["name"].as_str() == Some(own_name.as_str()),
                })
                .collect()
        });
        let keys = self
            .admin_get(&header, "/authentication/v1/apikey", ctx)
            .await?;
        let keys = section(&keys, |body| {
            body["data"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|k| page::KeyRow {
                    prefix: text(&k["prefix"]),
                    description: text(&k["description"]),
                    created: page::when(k["createdTimestamp"].as_i64()),
                    last_used: page::when(k["lastUsedTimestamp"].as_i64()),
                    valid_until: page::when(k["validUntil"].as_i64()),
                    sources: k["validSources"]
                        .as_array()
                        .map(|s| {
                            s.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| "anywhere".into()),
                    read_only: k["constraints"]["readOnly"].as_bool() == Some(true),
                })
                .collect()
        });
        let user_path: String =
            url::form_urlencoded::byte_serialize(principal.user_name.as_bytes()).collect();
        let signatures = self
            .admin_get(
                &header,
                &format!("/authentication/v1/user/{user_path}/signature"),
                ctx,
            )
            .await?;
        let signatures = section(&signatures, |body| {
            body["data"]["keys"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|k| page::SignatureRow {
                    key_id: text(&k["keyID"]),
                    description: text(&k["description"]),
                    created: page::when(k["createdTimestamp"].as_i64()),
                    last_used: page::when(k["lastUsedTimestamp"].as_i64()),
                })
                .collect()
        });
        let (csrf, cookies) = visit.csrf_for_form();
        let html = render(&page::Account {
            chrome: self.chrome(visit),
            csrf: &csrf,
            user: &principal.user_name,
            level: principal.level.as_str(),
            functions: principal.functions.join(", "),
            note,
            error,
            new_key,
            tokens,
            keys,
            signatures,
        });
        page::send(session, status, html, &visit.request_id, &cookies).await
    }

    async fn admin_get(
        &self,
        from: &RequestHeader,
        path: &str,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Answer> {
        let request = admin_request(from, Method::GET, path, &Credentials::Cookie, false)?;
        Ok(self.admin.call(&request, Vec::new(), ctx).await)
    }

    async fn to_sign_in(
        &self,
        session: &mut Session,
        visit: &Visit,
        rd: &str,
    ) -> pingora::Result<()> {
        let cookies = [token::EXPIRE_COOKIE.to_owned()];
        page::redirect(session, &sign_in_location(rd), &visit.request_id, &cookies).await
    }

    /// The account page's forms: each one admin call with the browser's token.
    async fn account_action(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        visit: &Visit,
        path: &str,
    ) -> pingora::Result<()> {
        let Some(form) = self.checked_form(session, ctx, visit).await? else {
            return Ok(());
        };
        let header = session.req_header().clone();
        let key_path = |field: &str| -> Option<String> {
            // `<user hex>/<key id>` as the page lists it; anything else names no key.
            let prefix = form.text(field)?;
            let (user_hex, key_id) = prefix.split_once('/')?;
            let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
            (ok(user_hex) && ok(key_id)).then(|| format!("{user_hex}/{key_id}"))
        };
        let (method, admin_path, body, done) = match path {
            "/.keyward/account/keys" => {
                let mut body = json!({ "description": form.get("description").unwrap_or("") });
                let sources: Vec<&str> = form
                    .get("sources")
                    .unwrap_or("")
                    .split([',', ' ', '\n'])
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect();
                if !sources.is_empty() {
                    body["validSources"] = json!(sources);
                }
                if let Some(days) = form.text("expiration_days") {
                    match days.parse::<i64>() {
                        Ok(days) => body["expirationDays"] = json!(days),
                        Err(_) => {
                            let error = "Expiry must be a whole number of days.";
                            return self.refused(session, ctx, visit, error, 400).await;
                        }
                    }
                }
                if form.checked("read_only") {
                    body["sessionConstraints"] = json!({ "readOnly": true });
                }
                (
                    Method::POST,
                    "/authentication/v1/apikey".to_owned(),
                    Some(body),
                    "created",
                )
            }
            "/.keyward/account/keys/roll" => {
                let Some(key) = key_path("key") else {
                    return self.refused(session, ctx, visit, "No such key.", 404).await;
                };
                let grace = form
                    .text("grace")
                    .unwrap_or("0")
                    .parse::<i64>()
                    .unwrap_or(-1);
                (
                    Method::POST,
                    format!("/authentication/v1/apikey/{key}/roll"),
                    Some(json!({ "gracePeriodSeconds": grace })),
                    "rolled",
                )
            }
            "/.keyward/account/keys/revoke" => {
                let Some(key) = key_path("key") else {
                    return self.refused(session, ctx, visit, "No such key.", 404).await;
                };
                (
                    Method::DELETE,
                    format!("/authentication/v1/apikey/{key}"),
                    None,
                    "revoked",
                )
            }
            "/.keyward/account/tokens/delete" => {
                let name = form.text("name").filter(|n| token::is_token(n));
                let Some(name) = name else {
                    return self
                        .refused(session, ctx, visit, "No such token.", 404)
                        .await;
                };
                (
                    Method::DELETE,
                    format!("/.TOKEN/{name}"),
                    None,
                    "token_deleted",
                )
            }
            "/.keyward/account/signatures/delete" => {
                let key_id = form.text("key_id").filter(|k| {
                    k.len() <= 128
                        && k.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                });
                let (Some(key_id), Some(principal)) = (key_id, self.whoami(&header, ctx).await?)
                else {
                    return self
                        .refused(session, ctx, visit, "No such signature key.", 404)
                        .await;
                };
                let user: String =
                    url::form_urlencoded::byte_serialize(principal.as_bytes()).collect();
                (
                    Method::DELETE,
                    format!("/authentication/v1/user/{user}/signature/{key_id}"),
                    None,
                    "signature_deleted",
                )
            }
            _ => {
                return self
                    .message(
                        session,
                        visit,
                        404,
                        "Not found",
                        "There is no such page.",
                        None,
                    )
                    .await
            }
        };
        let json = body.is_some();
        let request = admin_request(&header, method, &admin_path, &Credentials::Cookie, json)?;
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let answer = self.admin.call(&request, body, ctx).await;
        if answer.status == 401 {
            return self.to_sign_in(session, visit, ACCOUNT_PATH).await;
        }
        if !(200..300).contains(&answer.status) {
            let error = Some(admin_message(&answer));
            return self
                .account(session, ctx, visit, None, error, None, answer.status)
                .await;
        }
        if done == "created" || done == "rolled" {
            // The key itself, shown on this page and never again: no redirect that would
            // put it in a URL, and the page is not cached (`no-store`).
            let key = serde_json::from_slice::<Value>(&answer.body)
                .ok()
                .and_then(|b| b["data"]["apiKeyString"].as_str().map(str::to_owned));
            let note = note_for(done);
            return self
                .account(session, ctx, visit, note, None, key, 200)
                .await;
        }
        let location = format!("{ACCOUNT_PATH}?done={done}");
        page::redirect(session, &location, &visit.request_id, &[]).await
    }

    /// The account page again with `error` for an action that named nothing it can act on.
    async fn refused(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        visit: &Visit,
        error: &str,
        status: u16,
    ) -> pingora::Result<()> {
        let error = Some(error.to_owned());
        self.account(session, ctx, visit, None, error, None, status)
            .await
    }

    /// The name of the user this browser's token belongs to (asked of the admin API).
    async fn whoami(
        &self,
        header: &RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Option<String>> {
        let answer = self.admin_get(header, "/.TOKEN/", ctx).await?;
        Ok((answer.status == 200)
            .then(|| ctx.principal.as_ref().map(|p| p.user_name.clone()))
            .flatten())
    }

    /// `GET /.keyward/oidc/start?rd=…`: to the provider, with a flow cookie.
    async fn oidc_start(&self, session: &mut Session, visit: &Visit) -> pingora::Result<()> {
        let Some(provider) = &self.oidc else {
            return Ok(());
        };
        let rd = query_value(session.req_header().uri.query(), "rd");
        let rd = safe_return_path(rd.as_deref());
        let Some(origin) = visit.origin.as_deref() else {
            return self
                .message(
                    session,
                    visit,
                    400,
                    "Bad request",
                    "The request names no host.",
                    None,
                )
                .await;
        };
        match provider.start(origin, &rd).await {
            Ok((location, flow)) => {
                let cookies = [oidc::set_cookie(&flow, visit.tls)];
                page::redirect(session, &location, &visit.request_id, &cookies).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "OpenID Connect sign-in not started");
                self.message(
                    session,
                    visit,
                    503,
                    "Sign-in unavailable",
                    "The identity provider cannot be reached right now. Try again shortly.",
                    Some((SIGN_IN_PATH, "Back to sign-in")),
                )
                .await
            }
        }
    }

    /// `GET /.keyward/oidc/callback`: checks the provider's answer, creates or updates the
    /// user (`source: oidc`), mints their token (the token API's own mint) and returns to `rd`.
    async fn oidc_callback(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        visit: &Visit,
    ) -> pingora::Result<()> {
        let Some(provider) = &self.oidc else {
            return Ok(());
        };
        let header = session.req_header().clone();
        let query = header.uri.query();
        let clear = [oidc::clear_cookie(visit.tls)];
        let back = Some((SIGN_IN_PATH, "Back to sign-in"));
        if let Some(error) = query_value(query, "error") {
            let code_like =
                error.len() <= 64 && error.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            let text = match code_like {
                true => format!("The identity provider did not sign you in ({error})."),
                false => "The identity provider did not sign you in.".to_owned(),
            };
            return self
                .message_with(session, visit, 400, "Not signed in", &text, back, &clear)
                .await;
        }
        let Some(origin) = visit.origin.as_deref() else {
            return self
                .message_with(
                    session,
                    visit,
                    400,
                    "Bad request",
                    "The request names no host.",
                    back,
                    &clear,
                )
                .await;
        };
        let cookie = cookie_value(&header.headers, oidc::cookie_name(visit.tls));
        let finished = provider
            .finish(
                origin,
                cookie.as_deref(),
                query_value(query, "state").as_deref(),
                query_value(query, "code").as_deref(),
            )
            .await;
        let (identity, rd) = match finished {
            Ok(done) => done,
            Err(oidc::OidcError::Refused(why)) => {
                tracing::info!(reason = %why, "OpenID Connect sign-in refused");
                let text = "The answer from the identity provider did not check out. Start again.";
                return self
                    .message_with(session, visit, 400, "Not signed in", text, back, &clear)
                    .await;
            }
            Err(e @ oidc::OidcError::Unavailable(_)) => {
                tracing::warn!(error = %e, "OpenID Connect sign-in not completed");
                let text = "The identity provider cannot be reached right now. Try again shortly.";
                return self
                    .message_with(
                        session,
                        visit,
                        503,
                        "Sign-in unavailable",
                        text,
                        back,
                        &clear,
                    )
                    .await;
            }
        };
        // The names keyward's configuration gives powers of their own (the token administrator,
        // the bootstrap administrator) are never a provider's to hand out, whether or not their
        // user exists yet.
        let config = &ctx.config;
        let reserved = config
            .tokens
            .administrator
            .iter()
            .chain(config.bootstrap_admin.iter().map(|b| &b.name))
            .any(|reserved| reserved.eq_ignore_ascii_case(&identity.name));
        if reserved {
            tracing::warn!(user = %identity.name, "OpenID Connect sign-in refused: a name reserved by the configuration");
            let text = "That name belongs to another account here. Ask an administrator.";
            return self
                .message_with(session, visit, 403, "Not signed in", text, back, &clear)
                .await;
        }
        let settings = provider.settings();
        let login = DirectoryLogin {
            source: UserSource::Oidc,
            name: identity.name.clone(),
            customer: None,
            functions: settings.functions_for(identity.groups.iter().map(String::as_str)),
            external: settings.external,
            seen_ms: Some(keyward_core::now_ms()),
        };
        let audit = AuditEvent {
            seq: 0,
            time: keyward_store::audit::now_rfc3339(),
            request_id: visit.request_id.clone(),
            actor: identity.name.clone(),
            auth_method: AuthMethod::Oidc.as_str().to_owned(),
            operation: "user.update".into(),
            target_user: identity.name.clone(),
            target_credential: String::new(),
            status: 200,
            outcome: "ok".into(),
            source_ip: ctx.client_ip.map(|ip| ip.to_string()),
        };
        let user = match self
            .db
            .call(move |store| async move { store.upsert_directory_user(login, audit).await })
            .await
        {
            Ok(Some(user)) => user,
            Ok(None) => {
                let text = "That name belongs to another account here. Ask an administrator.";
                return self
                    .message_with(session, visit, 403, "Not signed in", text, back, &clear)
                    .await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "OpenID Connect user not stored");
                let text = "Signing in is not possible right now. Try again shortly.";
                return self
                    .message_with(
                        session,
                        visit,
                        503,
                        "Sign-in unavailable",
                        text,
                        back,
                        &clear,
                    )
                    .await;
            }
        };
        if user.locked {
            let text = "This account is locked.";
            return self
                .message_with(session, visit, 403, "Not signed in", text, back, &clear)
                .await;
        }
        let principal = Arc::new(keyward_auth::Principal {
            method: AuthMethod::Oidc,
            ..keyward_auth::basic::principal_for(&user)
        });
        let request = admin_request(
            &header,
            Method::POST,
            "/.TOKEN/",
            &Credentials::Cookie,
            false,
        )?;
        let answer = self
            .admin
            .call_as(principal, &request, Vec::new(), ctx)
            .await;
        match (answer.status, answer.header("set-cookie")) {
            (201, Some(cookie)) => {
                let cookies = [cookie.to_owned(), clear[0].clone()];
                let rd = safe_return_path(Some(&rd));
                page::redirect(session, &rd, &visit.request_id, &cookies).await
            }
            (status, _) => {
                let text = admin_message(&answer);
                self.message_with(session, visit, status, "Not signed in", &text, back, &clear)
                    .await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn message_with(
        &self,
        session: &mut Session,
        visit: &Visit,
        status: u16,
        heading: &str,
        text: &str,
        link: Option<(&str, &str)>,
        cookies: &[String],
    ) -> pingora::Result<()> {
        let html = render(&page::Message {
            chrome: self.chrome(visit),
            heading,
            text,
            link,
        });
        page::send(session, status, html, &visit.request_id, cookies).await
    }
}

/// What every page needs to know about the request.
struct Visit {
    tls: bool,
    request_id: String,
    /// The browser's CSRF token, when its cookie holds one.
    csrf: Option<String>,
    /// `scheme://host[:port]` as the browser addressed keyward (for the OIDC redirect URI).
    origin: Option<String>,
    title: String,
}

impl Visit {
    fn of(header: &RequestHeader, ctx: &RequestCtx) -> Visit {
        // Behind a TLS proxy (`tokens.secure_cookie`) the browser's origin is https too: the
        // pages' cookies are then `Secure` and `__Host-` prefixed as over TLS, so that no
        // sibling site can plant them (login CSRF), and the OIDC redirect URI is https.
        let tls = ctx.tls || ctx.config.tokens.secure_cookie;
        let scheme = if tls { "https" } else { "http" };
        let origin = request_host(header)
            .filter(|h| h.parse::<http::uri::Authority>().is_ok() && !h.contains('@'))
            .map(|h| format!("{scheme}://{}", h.to_ascii_lowercase()));
        Visit {
            tls,
            request_id: ctx.request_id.as_str().to_owned(),
            csrf: csrf::from_request(&header.headers, tls),
            origin,
            title: ctx
                .config
                .browser
                .title
                .clone()
                .unwrap_or_else(|| "keyward".into()),
        }
    }

    /// The token a form carries, and the cookie to set when the browser had none.
    fn csrf_for_form(&self) -> (String, Vec<String>) {
        match &self.csrf {
            Some(token) => (token.clone(), Vec::new()),
            None => {
                let token = csrf::new_token();
                let cookie = csrf::set_cookie(&token, self.tls);
                (token, vec![cookie])
            }
        }
    }
}

fn request_host(header: &RequestHeader) -> Option<&str> {
    match header.headers.get(http::header::HOST) {
        Some(value) => value.to_str().ok(),
        None => header.uri.authority().map(|a| a.as_str()),
    }
}

/// The admin request an action is made as: the browser's `Host` (the token domain and the
/// origin check), `Origin` and `Referer` (the guard's cross-site check), and its credentials.
fn admin_request(
    from: &RequestHeader,
    method: Method,
    path: &str,
    credentials: &Credentials<'_>,
    json: bool,
) -> pingora::Result<RequestHeader> {
    let mut request = RequestHeader::build(method, path.as_bytes(), None)?;
    if let Some(host) = request_host(from) {
        request.insert_header(http::header::HOST, host)?;
    }
    for name in [http::header::ORIGIN, http::header::REFERER] {
        for value in from.headers.get_all(&name) {
            request.append_header(name.clone(), value.clone())?;
        }
    }
    match credentials {
        Credentials::Password {
            name,
            password,
            code,
        } => {
            let basic = STANDARD.encode(format!("{name}:{password}"));
            request.insert_header(http::header::AUTHORIZATION, format!("Basic {basic}"))?;
            if let Some(code) = code {
                request.insert_header(keyward_auth::totp::HEADER, *code)?;
            }
        }
        Credentials::Cookie => {
            for value in from.headers.get_all(http::header::COOKIE) {
                request.append_header(http::header::COOKIE, value.clone())?;
            }
        }
    }
    if json {
        request.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    }
    Ok(request)
}

/// One cookie's value (exactly one cookie of that name).
fn cookie_value(headers: &http::HeaderMap, name: &str) -> Option<String> {
    let mut found = None;
    for value in headers.get_all(http::header::COOKIE) {
        let text = value.to_str().ok()?;
        for cookie in cookie::Cookie::split_parse(text).flatten() {
            if cookie.name() == name {
                if found.is_some() {
                    return None;
                }
                found = Some(cookie.value().to_owned());
            }
        }
    }
    found
}

/// The message an admin answer gives (the Argus envelope's, or the token API's).
fn admin_message(answer: &Answer) -> String {
    let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    body["messages"][0]["message"]
        .as_str()
        .or_else(|| body["message"].as_str())
        .or_else(|| body["error"].as_str())
        .unwrap_or("The request was refused.")
        .to_owned()
}

/// A section from an admin answer: its rows, or the admin API's reason for refusing.
fn section<T>(answer: &Answer, rows: impl FnOnce(&Value) -> Vec<T>) -> Section<T> {
    if answer.status != 200 {
        return Section::Refused(admin_message(answer));
    }
    let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    Section::Rows(rows(&body))
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or("").to_owned()
}

/// The note after an action, from the fixed list (never text the request chose).
fn note_for(done: &str) -> Option<&'static str> {
    Some(match done {
        "created" => "Key created.",
        "rolled" => {
            "Key rolled: the new key is below; the old one works until its grace period ends."
        }
        "revoked" => "Key revoked.",
        "token_deleted" => "Token deleted.",
        "signature_deleted" => "Signature key deleted.",
        _ => return None,
    })
}

fn render(template: &impl askama::Template) -> String {
    template.render().unwrap_or_else(|e| {
        tracing::error!(error = %e, "a page did not render");
        "<!doctype html><title>Error</title><p>This page could not be shown.</p>".to_owned()
    })
}

#[async_trait::async_trait]
impl keyward_http::service::LocalService for BrowserPages {
    async fn handle(&self, session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<()> {
        self.route(session, ctx).await
    }
}
