//! SIP over WebSocket, RFC 7118 (placeholder until the real module lands).

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::conn::{ConnMeta, Shared};

pub(crate) async fn serve_ws<S>(_io: S, meta: ConnMeta, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    shared.release(meta.remote.ip());
}
