//! Getting a VM powered off before export: `ShutdownGuest` through VMware Tools with a timeout and
//! then `PowerOffVM_Task`, or `PowerOffVM_Task` straight away, or nothing; skipped when the VM is
//! already off. Tasks are waited for and their faults surfaced.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{
    client::{self, Client},
    inventory,
    proto::{
        Fault, MoRef, envelope,
        envelope::{ObjectSpec, PropertySpec},
        response::{self, TaskState},
        vm::PowerState,
    },
};

/// How often power state and task info are polled. vCenter updates both within a second; polling
/// faster only adds load.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Default limit for a power-off task to finish (vSphere's own power operations take seconds).
pub const DEFAULT_TASK_TIMEOUT: Duration = Duration::from_secs(300);

/// How to stop the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "camelCase")]
pub enum PowerOffMode {
    /// `ShutdownGuest` (needs VMware Tools running), wait up to `timeout` for `poweredOff`, then
    /// `PowerOffVM_Task`.
    Graceful {
        /// How long the guest gets to shut down.
        timeout: Duration,
    },
    /// `PowerOffVM_Task` (pulling the plug).
    Force,
    /// Leave the VM alone; a VM that is not off is an error.
    Never,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PowerOffOutcome {
    /// It was already off; nothing was called.
    AlreadyOff,
    /// The guest shut down within the timeout.
    ShutDown,
    /// The guest did not shut down in time and was powered off.
    ForcedAfterTimeout,
    /// Powered off by `PowerOffVM_Task` as asked.
    PoweredOff,
}

/// Why the VM could not be powered off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A SOAP call failed.
    #[error("{step} for VM {vm}")]
    Call {
        /// What we were doing.
        step: &'static str,
        /// The VM.
        vm: MoRef,
        /// Why.
        #[source]
        source: client::Error,
    },
    /// Reading the power state failed.
    #[error("reading the power state of VM {vm}")]
    ReadState {
        /// The VM.
        vm: MoRef,
        /// Why.
        #[source]
        source: inventory::Error,
    },
    /// Graceful shutdown was asked but VMware Tools are not running in the guest.
    #[error(
        "VM {vm} cannot be shut down gracefully: VMware Tools are not running in the guest (status '{status}'); \
         use a forced power-off or shut the guest down yourself"
    )]
    ToolsNotRunning {
        /// The VM.
        vm: MoRef,
        /// `guest.toolsRunningStatus` as read.
        status: String,
    },
    /// The VM is on and the mode says not to touch it.
    #[error("VM {vm} is {state:?} and power-off was not allowed")]
    NotOff {
        /// The VM.
        vm: MoRef,
        /// Its state.
        state: PowerState,
    },
    /// `PowerOffVM_Task` ended in error.
    #[error("power-off task {task} of VM {vm} failed")]
    TaskFailed {
        /// The VM.
        vm: MoRef,
        /// The task.
        task: MoRef,
        /// The task's fault.
        #[source]
        fault: Fault,
    },
    /// A task did not finish in time.
    #[error("task {task} did not finish within {timeout:?}")]
    TaskTimeout {
        /// The task.
        task: MoRef,
        /// The limit.
        timeout: Duration,
    },
}

impl Client {
    /// `runtime.powerState` and `guest.toolsRunningStatus` of a VM.
    ///
    /// # Errors
    /// [`inventory::Error`] when the properties cannot be read.
    pub async fn power_state(&self, vm: &MoRef) -> Result<(PowerState, Option<String>), inventory::Error> {
        let spec = PropertySpec::new(
            "VirtualMachine",
            &["runtime.powerState", "guest.toolsRunningStatus"],
        );
        let objects = self
            .retrieve(
                "reading the power state",
                &[spec],
                &[ObjectSpec::Object(vm.clone())],
            )
            .await?;
        let object = objects
            .first()
            .ok_or_else(|| inventory::Error::VmGone { vm: vm.clone() })?;
        let state = match object.text("runtime.powerState") {
            Some("poweredOn") => PowerState::PoweredOn,
            Some("poweredOff") => PowerState::PoweredOff,
            Some("suspended") => PowerState::Suspended,
            _ => {
                return Err(inventory::Error::Describe(
                    crate::proto::vm::Error::MissingProperty {
                        vm: vm.clone(),
                        path: "runtime.powerState",
                    },
                ));
            }
        };
        Ok((state, object.text("guest.toolsRunningStatus").map(str::to_owned)))
    }

    /// Waits for a task to finish, polling `info`.
    ///
    /// # Errors
    /// `Ok(Err(fault))` when the task failed; `Err` when polling failed or `timeout` passed.
    pub async fn wait_task(&self, task: &MoRef, timeout: Duration) -> Result<Result<(), Fault>, WaitError> {
        let start = Instant::now();
        loop {
            let spec = PropertySpec::new(&task.kind, &["info"]);
            let objects = self
                .retrieve("reading task info", &[spec], &[ObjectSpec::Object(task.clone())])
                .await
                .map_err(WaitError::Read)?;
            let info = objects
                .first()
                .and_then(|o| o.prop("info"))
                .ok_or_else(|| WaitError::Read(inventory::Error::VmGone { vm: task.clone() }))?;
            let info = response::task_info(info).map_err(|e| {
                WaitError::Read(inventory::Error::Call {
                    step: "reading task info",
                    source: e.into(),
                })
            })?;
            match info.state {
                TaskState::Success => return Ok(Ok(())),
                TaskState::Error => {
                    return Ok(Err(info.error.unwrap_or(Fault {
                        kind: crate::proto::FaultKind::Other {
                            name: "TaskError".into(),
                        },
                        message: "task failed without a fault".into(),
                    })));
                }
                TaskState::Queued | TaskState::Running => {}
            }
            if start.elapsed() >= timeout {
                return Err(WaitError::Timeout);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Asks the guest to shut down (`ShutdownGuest`, needs VMware Tools) and returns without waiting;
    /// the controller polls [`Client::power_state`] from its own loop.
    ///
    /// # Errors
    /// [`Error::Call`] when the server refuses (e.g. Tools not running).
    pub async fn request_guest_shutdown(&self, vm: &MoRef) -> Result<(), Error> {
        self.call(&envelope::shutdown_guest(vm))
            .await
            .map(|_| ())
            .map_err(|source| Error::Call {
                step: "ShutdownGuest",
                vm: vm.clone(),
                source,
            })
    }

    /// Hard power-off (`PowerOffVM_Task`), waiting for the task.
    ///
    /// # Errors
    /// Call, task and timeout failures.
    pub async fn power_off(&self, vm: &MoRef) -> Result<(), Error> {
        self.hard_power_off(vm).await
    }

    async fn hard_power_off(&self, vm: &MoRef) -> Result<(), Error> {
        let request = envelope::power_off(vm);
        let body = self.call(&request).await.map_err(|source| Error::Call {
            step: "PowerOffVM_Task",
            vm: vm.clone(),
            source,
        })?;
        let task = response::moref(request.method, &body).map_err(|e| Error::Call {
            step: "PowerOffVM_Task",
            vm: vm.clone(),
            source: e.into(),
        })?;
        match self.wait_task(&task, DEFAULT_TASK_TIMEOUT).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(fault)) => Err(Error::TaskFailed {
                vm: vm.clone(),
                task,
                fault,
            }),
            Err(WaitError::Timeout) => Err(Error::TaskTimeout {
                task,
                timeout: DEFAULT_TASK_TIMEOUT,
            }),
            Err(WaitError::Read(source)) => Err(Error::ReadState {
                vm: vm.clone(),
                source,
            }),
        }
    }

    /// Makes sure `vm` is powered off according to `mode`.
    ///
    /// # Errors
    /// [`Error::ToolsNotRunning`] for `Graceful` without Tools, [`Error::NotOff`] for `Never` on a
    /// running VM, task and call failures otherwise.
    pub async fn ensure_powered_off(&self, vm: &MoRef, mode: PowerOffMode) -> Result<PowerOffOutcome, Error> {
        let read = |source| Error::ReadState {
            vm: vm.clone(),
            source,
        };
        let (state, tools) = self.power_state(vm).await.map_err(read)?;
        if state == PowerState::PoweredOff {
            return Ok(PowerOffOutcome::AlreadyOff);
        }
        match mode {
            PowerOffMode::Never => Err(Error::NotOff {
                vm: vm.clone(),
                state,
            }),
            PowerOffMode::Force => self
                .hard_power_off(vm)
                .await
                .map(|()| PowerOffOutcome::PoweredOff),
            PowerOffMode::Graceful { timeout } => {
                if state != PowerState::PoweredOn || tools.as_deref() != Some("guestToolsRunning") {
                    return Err(Error::ToolsNotRunning {
                        vm: vm.clone(),
                        status: tools.unwrap_or_else(|| format!("unknown; VM is {state:?}")),
                    });
                }
                let request = envelope::shutdown_guest(vm);
                self.call(&request).await.map_err(|source| Error::Call {
                    step: "ShutdownGuest",
                    vm: vm.clone(),
                    source,
                })?;
                let start = Instant::now();
                while start.elapsed() < timeout {
                    tokio::time::sleep(POLL_INTERVAL.min(timeout)).await;
                    if self.power_state(vm).await.map_err(read)?.0 == PowerState::PoweredOff {
                        return Ok(PowerOffOutcome::ShutDown);
                    }
                }
                tracing::warn!(vm = %vm, ?timeout, "guest did not shut down in time; powering off");
                self.hard_power_off(vm)
                    .await
                    .map(|()| PowerOffOutcome::ForcedAfterTimeout)
            }
        }
    }
}

/// Why waiting for a task failed.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// Its info could not be read.
    #[error("cannot read task info")]
    Read(#[source] inventory::Error),
    /// It did not finish in time.
    #[error("task did not finish in time")]
    Timeout,
}
