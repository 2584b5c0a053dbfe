//! How a connection starts, per listener: CONNECT, then the one session loop
//! (`Connection<T>`, over any `Transport`).
//! L3: the transports and the CONNECT phase. Invariants: `limits.connect_timeout_ms` bounds
//! everything before CONNACK; what the task keeps while a connection idles is the session loop,
//! not the start-up state.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{connect, ConnContext};
use crate::transport::{Tcp, Transport};

/// Serves one accepted plain TCP connection until it ends. Never panics on client input.
pub(crate) fn run_connection(
    stream: TcpStream,
    ctx: Arc<ConnContext>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send {
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + ctx.connect_timeout;
    serve(Tcp(stream), deadline, ctx, shutdown)
}

/// One connection over any transport: CONNECT (by `deadline`), the session loop, the end.
/// Not an `async fn`: the CONNECT phase (which owns the transport until the client is
/// connected) is boxed before the returned future exists, so that future, which an idle
/// connection keeps for its whole life, holds only the session loop.
fn serve<T: Transport>(
    transport: T,
    deadline: Instant,
    ctx: Arc<ConnContext>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send {
    let connect = Box::pin(connect::handshake(
        transport,
        deadline,
        ctx,
        shutdown.clone(),
    ));
    async move {
        let Some(mut conn) = connect.await else {
            return;
        };
        let reason = conn.serve(&shutdown).await;
        Box::pin(conn.finish(reason)).await;
    }
}
