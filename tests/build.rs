// The test helpers link libtorch through flg-worker: embed the same rpaths as the worker.
include!("../worker/build.rs");
