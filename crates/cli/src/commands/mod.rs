pub mod clients;
pub mod demo;
pub mod image;
pub mod initrd;
pub mod serve;
pub mod tftp;
pub mod vm;
