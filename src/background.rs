//! A named background thread that runs until it is told to stop: it gets a receiver that
//! disconnects at [`Background::stop`] (its `recv_timeout` then returns at once), and `stop`
//! waits for it to end. The retention pruner and the minute flusher are such threads.

use std::thread::{self, JoinHandle};

use crossbeam_channel::{bounded, Receiver, Sender};
use log::error;

use crate::error::{Error, Result};

pub struct Background {
    name: &'static str,
    /// Dropped to stop the thread.
    stop: Option<Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Background {
    /// Starts `body` on a thread called `name`, with the receiver that tells it to stop.
    pub fn start(
        name: &'static str,
        body: impl FnOnce(&Receiver<()>) + Send + 'static,
    ) -> Result<Background> {
        let (stop, stopped) = bounded::<()>(0);
        let handle = thread::Builder::new()
            .name(name.into())
            .spawn(move || body(&stopped))
            .map_err(|err| Error::Startup(format!("cannot start the {name} thread: {err}")))?;
        Ok(Background {
            name,
            stop: Some(stop),
            handle: Some(handle),
        })
    }

    /// Tells the thread to stop, and waits until it has.
    pub fn stop(mut self) {
        self.stop = None;
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                error!("the {} thread panicked", self.name);
            }
        }
    }
}
