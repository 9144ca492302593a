/** `vm.expose()`, `vm.ports()`, `vm.networkConfig`, `vm.setInternet()`: the facade's side of src/network. */
import type { AgentClient } from "../agent/client.js";
import { type InternetPolicy, networkOf, resolveInternet } from "../config.js";
import { howToRun, VMStateError } from "../errors.js";
import { configureGuest, type NetworkInfo, networkInfo, setInternet, unattached } from "../network/index.js";
import { closePorts, type ExposedPort, exposePort, listPorts } from "../network/ports.js";
import { vmRunDir } from "../paths.js";
import type { StateStore, VMRecord } from "../state/store.js";

export class VmNetwork {
  constructor(
    private readonly store: StateStore,
    private readonly record: () => VMRecord | null,
    private readonly agent: () => Promise<AgentClient>,
  ) {}

  private rec(): VMRecord {
    const r = this.record();
    if (!r) throw new VMStateError("the VM has not been started");
    return r;
  }

  /** The network as configured, with the addresses of the running VM (null ones when it is not running). */
  config(): NetworkInfo {
    const r = this.rec();
    const live = r.handle ? networkInfo(this.store, r.id) : null;
    return live ?? unattached(r.config);
  }

  expose(guestPort: number, opts: { hostPort?: number; host?: string } = {}): Promise<ExposedPort> {
    return exposePort(this.store, this.rec(), guestPort, opts);
  }

  async unexpose(which: number | { guestPort?: number; hostPort?: number } = {}): Promise<ExposedPort[]> {
    return closePorts(this.store, this.rec().id, typeof which === "number" ? { guestPort: which } : which);
  }

  ports(): ExposedPort[] {
    return listPorts(this.store, this.rec().id);
  }

  /** Change the egress policy of the running VM (and the config it restarts with). */
  async setInternet(policy: InternetPolicy): Promise<NetworkInfo> {
    const r = this.rec();
    const internet = resolveInternet(policy);
    if (!r.handle) throw new VMStateError(`VM ${r.id} is ${r.status}; ${howToRun(r.id, r.status, r.error)}`);
    const info = await setInternet(this.store, r.id, vmRunDir(r.id, this.store.dir), internet);
    this.store.update(r.id, { config: { ...r.config, network: { mode: networkOf(r.config).mode, internet } } });
    await configureGuest(await this.agent(), info); // the resolver the guest uses may have come or gone
    return info;
  }
}
