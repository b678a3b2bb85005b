mod express;
mod hostile;
mod http2;
mod proxy;
mod run;
mod service;
mod stop;
mod up;
pub mod util;
