//! The two small tasks per local socket. They move bytes and decide
//! nothing: the reader reads as much as the tunnel granted and hands it
//! over; the writer writes what the tunnel gives it and says when it did.

use straw_tunnel::LocalOut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tracing::debug;

use crate::tunnel::LocalIo;

/// What a pump tells its tunnel's task.
pub(crate) enum PumpMsg {
    /// Bytes read under a grant (`drained`: a short read, the socket had
    /// nothing more just now). Ends the grant.
    Read {
        stream: u64,
        bytes: Vec<u8>,
        drained: bool,
    },
    Eof {
        stream: u64,
    },
    Failed {
        stream: u64,
    },
    Written {
        stream: u64,
        n: usize,
    },
    /// The writer shut the socket's write side down.
    Closed {
        stream: u64,
    },
    Dialed {
        stream: u64,
        result: anyhow::Result<crate::tunnel::Dialed>,
    },
}

pub(crate) async fn read(
    stream: u64,
    mut rd: ReadHalf<Box<dyn LocalIo>>,
    mut grants: mpsc::UnboundedReceiver<usize>,
    tx: mpsc::UnboundedSender<PumpMsg>,
) {
    let mut buf = vec![0u8; straw_tunnel::READ_CHUNK];
    while let Some(grant) = grants.recv().await {
        let want = grant.min(buf.len()).max(1);
        let msg = match rd.read(&mut buf[..want]).await {
            Ok(0) => PumpMsg::Eof { stream },
            Ok(n) => PumpMsg::Read {
                stream,
                bytes: buf[..n].to_vec(),
                drained: n < want,
            },
            Err(e) => {
                debug!(stream, "local read failed: {e}");
                PumpMsg::Failed { stream }
            }
        };
        let last = !matches!(msg, PumpMsg::Read { .. });
        if tx.send(msg).is_err() || last {
            return;
        }
    }
}

pub(crate) async fn write(
    stream: u64,
    mut wr: WriteHalf<Box<dyn LocalIo>>,
    mut outs: mpsc::UnboundedReceiver<LocalOut>,
    tx: mpsc::UnboundedSender<PumpMsg>,
) {
    while let Some(out) = outs.recv().await {
        match out {
            LocalOut::Data(bytes) => {
                if let Err(e) = wr.write_all(&bytes).await {
                    debug!(stream, "local write failed: {e}");
                    let _ = tx.send(PumpMsg::Failed { stream });
                    return;
                }
                let _ = tx.send(PumpMsg::Written {
                    stream,
                    n: bytes.len(),
                });
            }
            LocalOut::Close => {
                let _ = wr.shutdown().await;
                let _ = tx.send(PumpMsg::Closed { stream });
                return;
            }
        }
    }
}
