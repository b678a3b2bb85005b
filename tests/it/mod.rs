mod express;
mod hostile;
mod proxy;
mod run;
mod service;
mod up;
pub mod util;
