mod proxy;
mod run;
pub mod util;
