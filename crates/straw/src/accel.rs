//! Makes a service's accelerator, for either end of the tunnel: the one
//! place that knows which protocol gets which accelerator and what each
//! side hands it (the client its cache and store of interrupted messages,
//! the server its SMTP resume store).

use straw_proto::partial::SharedStore;
use straw_proto::passthrough::Passthrough;
use straw_proto::{Accelerator, http, imap, pop3, smtp};

use crate::config::Protocol;
use crate::tunnel::SharedCache;

/// What one end gives its accelerators.
#[derive(Clone)]
pub enum Side {
    Client {
        pop3: pop3::Pop3Config,
        imap: imap::ImapConfig,
        http: http::HttpPolicy,
        /// What earlier connections cached (greetings, capabilities).
        cache: SharedCache,
        /// Interrupted transfers, to resume instead of fetching again.
        partials: Option<SharedStore>,
        /// POP3 hold ashore (`[pop3] hold_over_bytes`), with this
        /// service's view of the hold record.
        hold: Option<pop3::HoldConfig>,
    },
    Server {
        http: http::HttpPolicy,
        /// SMTP resume store, and the client's identity to key it by.
        smtp_store: Option<(SharedStore, String, u64)>,
    },
}

/// Makes the accelerator of one service's connections.
#[derive(Clone)]
pub struct AccelFactory {
    pub protocol: Protocol,
    pub side: Side,
}

impl AccelFactory {
    /// The client's cache for this service, if this is the client side.
    pub fn cache(&self) -> Option<&SharedCache> {
        match &self.side {
            Side::Client { cache, .. } => Some(cache),
            Side::Server { .. } => None,
        }
    }

    pub fn make(&self) -> Box<dyn Accelerator> {
        match &self.side {
            Side::Client {
                pop3: pop3_cfg,
                imap: imap_cfg,
                http: policy,
                cache,
                partials,
                hold,
            } => {
                let cache = cache.lock().expect("cache lock").clone();
                let store = partials.clone();
                match self.protocol {
                    Protocol::Tcp => Box::new(Passthrough::default()),
                    Protocol::Pop3 => with_store(
                        match hold {
                            Some(h) => {
                                pop3::ClientAccel::new(*pop3_cfg, &cache).with_hold(h.clone())
                            }
                            None => pop3::ClientAccel::new(*pop3_cfg, &cache),
                        },
                        store,
                        pop3::ClientAccel::with_store,
                    ),
                    Protocol::Smtp => with_store(
                        smtp::ClientAccel::new(&cache),
                        store,
                        smtp::ClientAccel::with_store,
                    ),
                    Protocol::Imap => with_store(
                        imap::ClientAccel::with_config(&cache, *imap_cfg),
                        store,
                        imap::ClientAccel::with_store,
                    ),
                    Protocol::Http => Box::new(http::ClientAccel::new(policy.clone())),
                }
            }
            Side::Server {
                http: policy,
                smtp_store,
            } => match self.protocol {
                Protocol::Tcp => Box::new(Passthrough::default()),
                Protocol::Pop3 => Box::new(pop3::ServerAccel::new()),
                Protocol::Smtp => Box::new(match smtp_store {
                    Some((store, client, max)) => smtp::ServerAccel::new()
                        .with_store(store.clone(), client)
                        .with_max_message(*max),
                    None => smtp::ServerAccel::new(),
                }),
                Protocol::Imap => Box::new(imap::ServerAccel::new(Default::default())),
                Protocol::Http => Box::new(http::ServerAccel::new(policy.clone())),
            },
        }
    }
}

fn with_store<A: Accelerator + 'static>(
    accel: A,
    store: Option<SharedStore>,
    attach: fn(A, SharedStore) -> A,
) -> Box<dyn Accelerator> {
    match store {
        Some(s) => Box::new(attach(accel, s)),
        None => Box::new(accel),
    }
}
