//! Internal macros.

/// Calls an authenticated relay route: `authed!(client, |transport, token| expr).await`.
/// Logs in first if there is no valid session token, and logs in again and retries once if
/// the relay answers `unauthenticated`. (A macro rather than a function taking an async
/// closure, so that the public futures stay `Send`.)
macro_rules! authed {
    ($client:expr, |$t:ident, $token:ident| $call:expr) => {
        async {
            let client: &$crate::client::Client = $client;
            let token = client.session_token().await?;
            let first = {
                let $t = &client.inner.transport;
                let $token: &str = &token;
                $call.await
            };
            match first {
                Err($crate::error::Error::Relay {
                    code: dm_wire::api::ErrorCode::Unauthenticated,
                    ..
                }) => {
                    let token = client.login().await?;
                    let $t = &client.inner.transport;
                    let $token: &str = &token;
                    $call.await
                }
                other => other,
            }
        }
    };
}
