//! End-to-end tests: the real `kalam-server` binary on 127.0.0.1:0, real clients
//! (`kalam-client` and arrow-flight's `FlightSqlServiceClient`). One test binary on purpose:
//! linking is the slow step.

mod common;
mod errors;
mod isolation;
mod protocol;
mod roles;
mod s3;
mod scale;
mod storage;
