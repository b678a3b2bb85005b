mod run;
pub mod util;
