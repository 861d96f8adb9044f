// Resource scenarios (shared memory, credentials, files, skills, configs, orchestrations)
// driven by the real socket.io-client: `node resources.js NAME 'PARAMS'` prints one JSON
// object of what the clients saw; tests/relay_resources.rs asserts on it.
'use strict';
const crypto = require('crypto');
const { connect, ack, waitFor, sleep, received, runScenario } = require('./lib');

const scenarios = {};

// Connects the named agents with their tokens: {name: socket}.
async function agents(p, names, opts = {}) {
  const out = {};
  for (const n of names) {
    const auth = n === 'master' ? { token: p.master } : { token: p.tokens[n], agent_id: n };
    out[n] = await connect(p.url, auth, opts);
  }
  return out;
}

const closeAll = (socks) => Object.values(socks).forEach((s) => s.close());

// Every event a socket received, as one JSON text (to search for secrets).
const seen = (s) => JSON.stringify(s.log);

scenarios.memory = async (p) => {
  const o = {};
  const s = await agents(p, ['master', 'w1', 'w2']);
  o.set = await ack(s.w1, 'set_shared_memory', { key: 'k1', value: { a: 1 }, ttl: 60 });
  o.update_seen = await waitFor(s.w2, 'shared_memory_update', (d) => d.key === 'k1');
  o.mgmt_seen = await waitFor(s.master, 'management_data_update', (d) => d.type === 'memory_updated');
  o.get = await ack(s.w2, 'get_shared_memory', { key: 'k1' });
  o.list = await ack(s.w2, 'list_shared_memory', {});
  o.overwrite_other = await ack(s.w2, 'set_shared_memory', { key: 'k1', value: 2 });
  o.delete_other = await ack(s.w2, 'delete_shared_memory', { key: 'k1' });
  o.overwrite_master = await ack(s.master, 'set_shared_memory', { key: 'k1', value: { a: 3 } });
  o.get_after_master = await ack(s.w1, 'get_shared_memory', { key: 'k1' });
  o.overwrite_owner = await ack(s.w1, 'set_shared_memory', { key: 'k1', value: 'mine' });
  o.no_key = await ack(s.w1, 'set_shared_memory', { value: 1 });
  o.no_value = await ack(s.w1, 'set_shared_memory', { key: 'x' });
  o.bad_ttl = await ack(s.w1, 'set_shared_memory', { key: 'x', value: 1, ttl: -1 });
  o.too_big = await ack(s.w1, 'set_shared_memory', { key: 'big', value: 'x'.repeat(p.big) });
  o.get_missing = await ack(s.w1, 'get_shared_memory', { key: 'nope' });
  o.get_no_key = await ack(s.w1, 'get_shared_memory', {});
  o.delete_missing = await ack(s.w1, 'delete_shared_memory', { key: 'nope' });
  // TTL: the key is there, then expired (the store reclaims it: never listed again).
  o.set_short = await ack(s.w1, 'set_shared_memory', { key: 'short', value: 1, ttl: 0.3 });
  o.get_short = await ack(s.w1, 'get_shared_memory', { key: 'short' });
  await sleep(700);
  o.get_expired = await ack(s.w1, 'get_shared_memory', { key: 'short' });
  o.list_after_expiry = await ack(s.w1, 'list_shared_memory', {});
  o.delete = await ack(s.w1, 'delete_shared_memory', { key: 'k1' });
  o.deleted_seen = await waitFor(s.w2, 'shared_memory_deleted', (d) => d.key === 'k1');
  o.get_deleted = await ack(s.w2, 'get_shared_memory', { key: 'k1' });
  closeAll(s);
  return o;
};

// One relay-side step of the key shared with a Clove client: `op` set, get or list.
scenarios.memory_step = async (p) => {
  const s = await connect(p.url, { token: p.token, agent_id: p.agent });
  let r;
  if (p.op === 'set') r = await ack(s, 'set_shared_memory', { key: p.key, value: p.value, ttl: p.ttl });
  else if (p.op === 'get') r = await ack(s, 'get_shared_memory', { key: p.key });
  else r = await ack(s, 'list_shared_memory', {});
  s.close();
  return r;
};

scenarios.credentials = async (p) => {
  const o = {};
  const s = await agents(p, ['master', 'w1', 'w2', 'w3']);
  const secret = { user: 'svc', pass: p.marker };
  o.store = await ack(s.w1, 'store_credentials', { name: 'db', value: secret, description: 'the db' });
  const id = o.store.credentialId;
  o.updated_seen = await waitFor(s.w1, 'credentials_updated', (d) => d.credentialId === id);
  o.mgmt_seen = await waitFor(s.master, 'management_data_update', (d) => d.type === 'credentials_updated');
  o.get_owner = await ack(s.w1, 'get_credentials', { credentialId: id });
  o.get_stranger = await ack(s.w3, 'get_credentials', { credentialId: id });
  o.get_master = await ack(s.master, 'get_credentials', { credentialId: id });
  o.share_by_other = await ack(s.w2, 'share_credentials', { credentialId: id, targetAgentId: 'w2' });
  o.share = await ack(s.w1, 'share_credentials', { credentialId: id, targetAgentId: 'w2' });
  o.shared_seen = await waitFor(s.w2, 'credentials_shared', (d) => d.credentialId === id);
  o.get_shared = await ack(s.w2, 'get_credentials', { credentialId: id });
  o.revoke_by_shared = await ack(s.w2, 'revoke_credentials_access', { credentialId: id, targetAgentId: 'w2' });
  o.list_w2 = await ack(s.w2, 'list_credentials', {});
  // ClawNet's names: service, credentials, shareWith, agents (a list).
  o.store_alias = await ack(s.w1, 'store_credentials', { service: 'api', credentials: 'tok-' + p.marker, shareWith: ['w3'] });
  o.get_alias = await ack(s.w3, 'get_credentials', { service: 'api' });
  o.revoke = await ack(s.w1, 'revoke_credentials_access', { service: 'db', agents: ['w2'] });
  o.revoked_seen = await waitFor(s.w2, 'credentials_access_revoked', (d) => d.credentialId === id);
  o.get_after_revoke = await ack(s.w2, 'get_credentials', { credentialId: id });
  o.restore = await ack(s.w1, 'store_credentials', { name: 'db', value: { user: 'svc', pass: p.marker + '-2' } });
  o.get_restored = await ack(s.w1, 'get_credentials', { credentialId: id });
  o.list_master = await ack(s.master, 'list_credentials', {});
  o.list_w3 = await ack(s.w3, 'list_credentials', {});
  o.no_value = await ack(s.w1, 'store_credentials', { name: 'x' });
  o.no_name = await ack(s.w1, 'store_credentials', { value: 'x' });
  o.get_unknown = await ack(s.w1, 'get_credentials', { credentialId: 'no-such-id' });
  o.get_nothing = await ack(s.w1, 'get_credentials', {});
  o.share_no_target = await ack(s.w1, 'share_credentials', { credentialId: id });
  o.delete_other = await ack(s.w3, 'delete_credentials', { credentialId: id });
  o.delete = await ack(s.w1, 'delete_credentials', { credentialId: id });
  o.get_deleted = await ack(s.w1, 'get_credentials', { credentialId: id });
  await sleep(100);
  o.marker_in_events = Object.values(s).some((x) => seen(x).includes(p.marker));
  closeAll(s);
  return o;
};

// Stores `n` credentials (values `prefix-i`) as w1: their ids.
scenarios.store_many = async (p) => {
  const s = await connect(p.url, { token: p.token, agent_id: 'w1' });
  const ids = [];
  const batch = 50;
  for (let i = 0; i < p.n; i += batch) {
    const rs = await Promise.all(
      Array.from({ length: Math.min(batch, p.n - i) }, (_, j) =>
        ack(s, 'store_credentials', { name: `c${i + j}`, value: `${p.prefix}-${i + j}` }, 20000)));
    for (const r of rs) {
      if (!r.success) throw new Error('store failed: ' + JSON.stringify(r));
      ids.push(r.credentialId);
    }
  }
  s.close();
  return { ids };
};

// Reads credentials back: {id: value or error code}.
scenarios.read_many = async (p) => {
  const s = await connect(p.url, { token: p.token, agent_id: 'w1' });
  const out = {};
  const batch = 50;
  for (let i = 0; i < p.ids.length; i += batch) {
    const part = p.ids.slice(i, i + batch);
    const rs = await Promise.all(part.map((id) => ack(s, 'get_credentials', { credentialId: id }, 20000)));
    rs.forEach((r, j) => { out[part[j]] = r.success ? r.data.value : { code: r.code, error: r.error }; });
  }
  s.close();
  return out;
};

scenarios.files = async (p) => {
  const o = {};
  const s = await agents(p, ['master', 'w1', 'w2', 'w3']);
  const b64 = (t) => Buffer.from(t).toString('base64');
  o.upload = await ack(s.w1, 'upload_file', { name: 'a.txt', data: b64('hello'), type: 'text/plain' });
  const id = o.upload.fileId;
  o.uploaded_seen = await waitFor(s.w1, 'file_uploaded', (d) => d.fileId === id);
  o.mgmt_seen = await waitFor(s.master, 'management_data_update', (d) => d.type === 'file_uploaded');
  o.upload_alias = await ack(s.w1, 'upload_file', { filename: 'b.bin', data: b64('bee'), shareWith: ['w2'] });
  o.alias_seen_by_w2 = await waitFor(s.w2, 'file_uploaded', (d) => d.fileId === o.upload_alias.fileId);
  const bin = crypto.randomBytes(3000);
  o.upload_binary = await ack(s.w1, 'upload_file', { name: 'c.bin', data: bin });
  const dbin = await ack(s.w1, 'download_file', { fileId: o.upload_binary.fileId });
  o.binary_round_trip = dbin.success && Buffer.from(dbin.data.data, 'base64').equals(bin);
  o.download = await ack(s.w1, 'download_file', { fileId: id });
  o.download_stranger = await ack(s.w2, 'download_file', { fileId: id });
  o.share_by_other = await ack(s.w2, 'share_file', { fileId: id, targetAgentId: 'w2' });
  o.share = await ack(s.w1, 'share_file', { fileId: id, targetAgentId: 'w2' });
  o.shared_seen = await waitFor(s.w2, 'file_shared', (d) => d.fileId === id);
  o.download_shared = await ack(s.w2, 'download_file', { fileId: id });
  o.download_master = await ack(s.master, 'download_file', { fileId: id });
  o.list_w2 = await ack(s.w2, 'list_files', {});
  o.list_w3 = await ack(s.w3, 'list_files', {});
  o.revoke = await ack(s.w1, 'revoke_file_access', { fileId: id, agents: ['w2'] });
  o.revoked_seen = await waitFor(s.w2, 'file_access_revoked', (d) => d.fileId === id);
  o.download_revoked = await ack(s.w2, 'download_file', { fileId: id });
  o.delete_other = await ack(s.w3, 'delete_file', { fileId: id });
  o.delete = await ack(s.w1, 'delete_file', { fileId: id });
  o.deleted_seen = await waitFor(s.w1, 'file_deleted', (d) => d.fileId === id);
  o.download_deleted = await ack(s.w1, 'download_file', { fileId: id });
  o.no_data = await ack(s.w1, 'upload_file', { name: 'x' });
  o.no_name = await ack(s.w1, 'upload_file', { data: b64('x') });
  o.bad_base64 = await ack(s.w1, 'upload_file', { name: 'x', data: '!!!not base64!!!' });
  o.download_missing = await ack(s.w1, 'download_file', { fileId: 'no-such-file' });
  o.deleted_id = id;
  closeAll(s);
  return o;
};

// A file of `size` random bytes up and down; and one of `size + 1` refused.
scenarios.big_file = async (p) => {
  const o = {};
  const s = await connect(p.url, { token: p.token, agent_id: 'w1' });
  const bytes = crypto.randomBytes(p.size);
  const sha = (b) => crypto.createHash('sha256').update(b).digest('hex');
  let t0 = Date.now();
  o.upload = await ack(s, 'upload_file', { name: 'big.bin', data: bytes.toString('base64') }, 60000);
  o.upload_ms = Date.now() - t0;
  t0 = Date.now();
  const d = await ack(s, 'download_file', { fileId: o.upload.fileId }, 60000);
  o.download_ms = Date.now() - t0;
  o.download_ok = d.success;
  o.size = d.success ? d.data.size : null;
  o.same = d.success && sha(Buffer.from(d.data.data, 'base64')) === sha(bytes);
  o.over = await ack(s, 'upload_file', { name: 'over.bin', data: crypto.randomBytes(p.size + 1).toString('base64') }, 60000);
  o.still_connected = (await ack(s, 'latency_ping', {})).ok === true;
  s.close();
  return o;
};

scenarios.quota = async (p) => {
  const o = {};
  const s = await connect(p.url, { token: p.token, agent_id: 'w1' });
  const data = Buffer.alloc(p.size, 1).toString('base64');
  o.first = await ack(s, 'upload_file', { name: 'one', data });
  o.second = await ack(s, 'upload_file', { name: 'two', data });
  o.third = await ack(s, 'upload_file', { name: 'three', data });
  o.delete = await ack(s, 'delete_file', { fileId: o.first.fileId });
  o.after_delete = await ack(s, 'upload_file', { name: 'four', data });
  s.close();
  return o;
};

scenarios.skills = async (p) => {
  const o = {};
  const s = await agents(p, ['master', 'w1', 'w2', 'w3']);
  o.register = await ack(s.w1, 'register_skill', { name: 'parse', description: 'parses logs' });
  const id = o.register.skillId;
  o.registered_seen = await waitFor(s.w1, 'skill_registered', (d) => d.skillId === id);
  o.duplicate = await ack(s.w1, 'register_skill', { name: 'parse', description: 'again' });
  o.register_alias = await ack(s.w1, 'register_skill', { name: 'grep', data: { cmd: 'rg' }, shareWith: ['w2'], experience: 4 });
  o.get = await ack(s.w1, 'get_skill', { skillId: id });
  o.get_alias_shared = await ack(s.w2, 'get_skill', { skillId: o.register_alias.skillId });
  o.get_stranger = await ack(s.w3, 'get_skill', { skillId: id });
  o.exp1 = await ack(s.w1, 'update_skill_experience', { skillId: id });
  o.exp5 = await ack(s.w1, 'update_skill_experience', { skillId: id, increment: 5 });
  o.exp_floor = await ack(s.w1, 'update_skill_experience', { skillId: id, experience: -100 });
  o.exp_stranger = await ack(s.w3, 'update_skill_experience', { skillId: id });
  o.exp_bad = await ack(s.w1, 'update_skill_experience', { skillId: id, increment: 'lots' });
  o.share_by_other = await ack(s.w2, 'share_skill', { skillId: id, targetAgentId: 'w2' });
  o.share = await ack(s.w1, 'share_skill', { skillId: id, targetAgentId: 'w2' });
  o.shared_seen = await waitFor(s.w2, 'skill_shared', (d) => d.skillId === id);
  o.exp_shared = await ack(s.w2, 'update_skill_experience', { skillId: id, increment: 2 });
  o.list_w2 = await ack(s.w2, 'list_skills', {});
  o.list_master = await ack(s.master, 'list_skills', {});
  o.revoke = await ack(s.w1, 'revoke_skill_access', { skillId: id, agents: 'w2' });
  o.revoked_seen = await waitFor(s.w2, 'skill_access_revoked', (d) => d.skillId === id);
  o.get_revoked = await ack(s.w2, 'get_skill', { skillId: id });
  o.delete_other = await ack(s.w2, 'delete_skill', { skillId: id });
  o.delete_master = await ack(s.master, 'delete_skill', { skillId: id });
  o.deleted_seen = await waitFor(s.w1, 'skill_deleted', (d) => d.skillId === id);
  o.get_deleted = await ack(s.w1, 'get_skill', { skillId: id });
  o.no_name = await ack(s.w1, 'register_skill', { description: 'x' });
  closeAll(s);
  return o;
};

scenarios.configs = async (p) => {
  const o = {};
  const s = await agents(p, ['master', 'w1', 'w2']);
  o.save = await ack(s.w1, 'save_agent_config', { name: 'runner', data: { v: 1 } });
  const id = o.save.configId;
  o.saved_seen = await waitFor(s.master, 'management_data_update', (d) => d.type === 'config_saved');
  o.duplicate = await ack(s.w1, 'save_agent_config', { name: 'runner', data: { v: 9 } });
  o.update2 = await ack(s.w1, 'update_agent_config', { configId: id, data: { v: 2 } });
  o.updated_seen = await waitFor(s.w1, 'config_updated', (d) => d.configId === id);
  o.update3 = await ack(s.w1, 'update_agent_config', { configId: id, data: { v: 3 } });
  o.get3 = await ack(s.w1, 'get_agent_config', { configId: id });
  o.revert1 = await ack(s.w1, 'revert_agent_config', { configId: id, toVersion: 1 });
  o.get_reverted = await ack(s.w1, 'get_agent_config', { configId: id });
  o.revert_alias = await ack(s.w1, 'revert_agent_config', { configId: id, version: 3 });
  o.revert_trimmed = await ack(s.w1, 'revert_agent_config', { configId: id, toVersion: 1 });
  o.revert_unknown = await ack(s.w1, 'revert_agent_config', { configId: id, toVersion: 99 });
  o.clone = await ack(s.w1, 'clone_agent_config', { configId: id, newName: 'runner-2' });
  o.get_clone = await ack(s.w1, 'get_agent_config', { configId: o.clone.newConfigId });
  o.list = await ack(s.w1, 'list_agent_configs', {});
  o.list_w2 = await ack(s.w2, 'list_agent_configs', {});
  o.get_other = await ack(s.w2, 'get_agent_config', { configId: id });
  o.update_other = await ack(s.w2, 'update_agent_config', { configId: id, data: {} });
  o.update_master = await ack(s.master, 'update_agent_config', { configId: id, data: { v: 'm' } });
  o.no_data = await ack(s.w1, 'save_agent_config', { name: 'x' });
  o.delete_other = await ack(s.w2, 'delete_agent_config', { configId: id });
  o.delete = await ack(s.w1, 'delete_agent_config', { configId: id });
  o.deleted_seen = await waitFor(s.w1, 'config_deleted', (d) => d.configId === id);
  o.get_deleted = await ack(s.w1, 'get_agent_config', { configId: id });
  closeAll(s);
  return o;
};

scenarios.orchestrations = async (p) => {
  const o = {};
  const s = await agents(p, ['master', 'a1', 'a2', 'w3']);
  // Sequential, seed names: one task at a time, in order.
  o.create = await ack(s.master, 'create_orchestration', {
    name: 'pipeline', agents: ['a1', 'a2'], mode: 'sequential',
    tasks: [
      { description: 'fetch', command: '/fetch', targetAgentId: 'a1' },
      { description: 'process', command: '/process', targetAgentId: 'a2' },
    ],
  });
  const id = o.create.orchestrationId;
  o.created_seen = await waitFor(s.a1, 'orchestration_created', (d) => d.orchestrationId === id);
  o.start_by_worker = await ack(s.a1, 'start_orchestration', { orchestrationId: id });
  o.start = await ack(s.master, 'start_orchestration', { orchestrationId: id });
  o.start_again = await ack(s.master, 'start_orchestration', { orchestrationId: id });
  o.exec0 = await waitFor(s.a1, 'exec_task', (d) => d.orchestrationId === id);
  o.legacy0 = await waitFor(s.a1, 'orchestration_task', (d) => d.orchId === id);
  o.early = await ack(s.a2, 'report_task_result', { orchestrationId: id, taskIndex: 1, status: 'completed', result: 'x' });
  o.foreign = await ack(s.w3, 'report_task_result', { orchestrationId: id, taskIndex: 0, status: 'completed', result: 'x' });
  o.bad_status = await ack(s.a1, 'report_task_result', { orchestrationId: id, taskIndex: 0, status: 'meh' });
  o.bad_index = await ack(s.a1, 'report_task_result', { orchestrationId: id, taskIndex: 7, status: 'completed' });
  o.report0 = await ack(s.a1, 'report_task_result', { orchestrationId: id, taskIndex: 0, status: 'completed', result: 'fetched' });
  o.repeat0 = await ack(s.a1, 'report_task_result', { orchestrationId: id, taskIndex: 0, status: 'completed', result: 'again' });
  o.exec1 = await waitFor(s.a2, 'exec_task', (d) => d.orchestrationId === id);
  o.a2_got_task0 = received(s.a2, 'exec_task').some((t) => t.orchestrationId === id && t.taskIndex === 0);
  o.mid = await ack(s.master, 'get_orchestration', { orchestrationId: id });
  o.report1 = await ack(s.a2, 'report_task_result', { orchestrationId: id, taskIndex: 1, status: 'completed', result: 'processed' });
  o.completed = await waitFor(s.master, 'orchestration_completed', (d) => d.orchId === id);
  o.get = await ack(s.master, 'get_orchestration', { orchestrationId: id });
  o.list = await ack(s.master, 'list_orchestrations', {});
  o.list_w3 = await ack(s.w3, 'list_orchestrations', {});
  o.get_w3 = await ack(s.w3, 'get_orchestration', { orchestrationId: id });

  // Parallel, ClawNet's names: all start at once; a task without target goes to every agent;
  // one agent's report counts once; a failure makes the plan fail once all are done.
  const par = await ack(s.master, 'create_orchestration', {
    name: 'fanout', agents: ['a1', 'a2'], parallel: true,
    tasks: [{ command: '/all' }, { command: '/one', target: 'a2' }],
  });
  o.par_create = par;
  o.par_start = await ack(s.master, 'start_orchestration', { orchId: par.orchId });
  o.par_a1 = await waitFor(s.a1, 'exec_task', (d) => d.orchestrationId === par.orchId);
  o.par_a2_count = 0;
  await waitFor(s.a2, 'exec_task', (d) => d.orchestrationId === par.orchId && d.taskIndex === 1);
  o.par_a2_count = received(s.a2, 'exec_task').filter((d) => d.orchestrationId === par.orchId).length;
  o.par_r1 = await ack(s.a1, 'report_task_result', { orchId: par.orchId, taskIndex: 0, status: 'completed', result: 'a1 done' });
  o.par_dup = await ack(s.a1, 'report_task_result', { orchId: par.orchId, taskIndex: 0, status: 'completed', result: 'again' });
  o.par_r2 = await ack(s.a2, 'report_task_result', { orchId: par.orchId, taskIndex: 1, status: 'failed', result: 'broke' });
  o.par_running = await ack(s.master, 'get_orchestration', { orchestrationId: par.orchId });
  o.par_r3 = await ack(s.a2, 'report_task_result', { orchId: par.orchId, taskIndex: 0, status: 'completed', result: 'a2 done' });
  o.par_completed = await waitFor(s.master, 'orchestration_completed', (d) => d.orchId === par.orchId);

  // Sequential with a failure: the plan fails, the next task never goes out.
  const f = await ack(s.master, 'create_orchestration', {
    name: 'fails', mode: 'sequential',
    tasks: [{ command: '/x', targetAgentId: 'a1' }, { command: '/y', targetAgentId: 'a2' }],
  });
  await ack(s.master, 'start_orchestration', { orchestrationId: f.orchestrationId });
  await waitFor(s.a1, 'exec_task', (d) => d.orchestrationId === f.orchestrationId);
  o.fail_report = await ack(s.a1, 'report_task_result', { orchestrationId: f.orchestrationId, taskIndex: 0, status: 'failed', result: 'no' });
  o.fail_completed = await waitFor(s.master, 'orchestration_completed', (d) => d.orchId === f.orchestrationId);
  await sleep(100);
  o.fail_a2_got = received(s.a2, 'exec_task').some((d) => d.orchestrationId === f.orchestrationId);

  // Cancel: every agent is told; reports are refused after.
  const c = await ack(s.master, 'create_orchestration', {
    name: 'cancelled', agents: ['a1', 'a2'], mode: 'parallel', tasks: [{ command: '/z' }],
  });
  await ack(s.master, 'start_orchestration', { orchestrationId: c.orchestrationId });
  o.cancel_by_worker = await ack(s.a1, 'cancel_orchestration', { orchestrationId: c.orchestrationId });
  o.cancel = await ack(s.master, 'cancel_orchestration', { orchestrationId: c.orchestrationId });
  o.cancel_a1 = await waitFor(s.a1, 'orchestration_cancelled', (d) => d.orchestrationId === c.orchestrationId);
  o.cancel_a2 = await waitFor(s.a2, 'orchestration_cancelled', (d) => d.orchestrationId === c.orchestrationId);
  o.report_after_cancel = await ack(s.a1, 'report_task_result', { orchestrationId: c.orchestrationId, taskIndex: 0, status: 'completed' });
  o.cancel_again = await ack(s.master, 'cancel_orchestration', { orchestrationId: c.orchestrationId });

  o.no_tasks = await ack(s.master, 'create_orchestration', { name: 'empty', tasks: [] });
  o.no_target = await ack(s.master, 'create_orchestration', { name: 'nowhere', tasks: [{ command: '/q' }] });
  o.bad_mode = await ack(s.master, 'create_orchestration', { name: 'm', mode: 'sideways', tasks: [{ command: '/q', target: 'a1' }] });
  o.start_unknown = await ack(s.master, 'start_orchestration', { orchestrationId: 'nope' });
  closeAll(s);
  return o;
};

// Creates and starts a plan (as master) whose tasks go to `p.targets` in `p.mode`; returns
// its id. Targets need not be connected.
scenarios.start_plan = async (p) => {
  const m = await connect(p.url, { token: p.master });
  const r = await ack(m, 'create_orchestration', {
    name: p.name || 'plan', mode: p.mode,
    tasks: p.targets.map((t, i) => ({ command: `/step${i}`, targetAgentId: t })),
  });
  if (!r.success) throw new Error(JSON.stringify(r));
  const s = await ack(m, 'start_orchestration', { orchestrationId: r.orchestrationId });
  if (!s.success) throw new Error(JSON.stringify(s));
  m.close();
  return { id: r.orchestrationId };
};

// Connects as agent `p.agent`, waits for an exec_task of plan `p.id` and reports it (unless
// `p.report` is false); returns what it got.
scenarios.work = async (p) => {
  const s = await connect(p.url, { token: p.token, agent_id: p.agent });
  const task = await waitFor(s, 'exec_task', (d) => d.orchestrationId === p.id, p.wait_ms || 5000);
  let report = null;
  if (task && p.report !== false) {
    report = await ack(s, 'report_task_result', { orchestrationId: p.id, taskIndex: task.taskIndex, status: 'completed', result: `${p.agent} did ${task.command}` });
  }
  s.close();
  return { task, report };
};

// Reads a plan as master (waiting up to `p.wait_ms` for it to reach `p.status`).
scenarios.plan_status = async (p) => {
  const m = await connect(p.url, { token: p.master });
  const deadline = Date.now() + (p.wait_ms || 0);
  let r = await ack(m, 'get_orchestration', { orchestrationId: p.id });
  while (p.status && r.success && r.data.status !== p.status && Date.now() < deadline) {
    await sleep(50);
    r = await ack(m, 'get_orchestration', { orchestrationId: p.id });
  }
  m.close();
  return r;
};

// A task never answered: the plan fails after relay.task_timeout_secs, and says so.
scenarios.timeout = async (p) => {
  const s = await agents(p, ['master', 'a1']);
  const r = await ack(s.master, 'create_orchestration', {
    name: 'slow', mode: 'sequential', tasks: [{ command: '/wait', targetAgentId: 'a1' }],
  });
  await ack(s.master, 'start_orchestration', { orchestrationId: r.orchestrationId });
  const t0 = Date.now();
  const done = await waitFor(s.master, 'orchestration_completed', (d) => d.orchId === r.orchestrationId, 10000);
  const ms = Date.now() - t0;
  const get = await ack(s.master, 'get_orchestration', { orchestrationId: r.orchestrationId });
  const late = await ack(s.a1, 'report_task_result', { orchestrationId: r.orchestrationId, taskIndex: 0, status: 'completed' });
  closeAll(s);
  return { done, ms, get, late };
};

// Tenant isolation: tenant B's agent tries every resource of tenant A by id and lists its own.
scenarios.isolation = async (p) => {
  const o = {};
  const a = await connect(p.url, { token: p.secret, agent_id: 'a-user', role: 'master' });
  const b = await connect(p.url, { token: p.b_secret, agent_id: 'b-user', role: 'master' });
  const b64 = Buffer.from('tenant a data').toString('base64');
  await ack(a, 'set_shared_memory', { key: 'same', value: 'A' });
  await ack(b, 'set_shared_memory', { key: 'same', value: 'B' });
  const ids = {
    cred: (await ack(a, 'store_credentials', { name: 'db', value: p.marker })).credentialId,
    file: (await ack(a, 'upload_file', { name: 'f', data: b64 })).fileId,
    skill: (await ack(a, 'register_skill', { name: 's', description: 'd' })).skillId,
    config: (await ack(a, 'save_agent_config', { name: 'c', data: { x: 1 } })).configId,
    orch: (await ack(a, 'create_orchestration', { name: 'o', tasks: [{ command: '/c', targetAgentId: 'b-user' }] })).orchestrationId,
  };
  o.ids = ids;
  await ack(a, 'start_orchestration', { orchestrationId: ids.orch });
  o.a_same = await ack(a, 'get_shared_memory', { key: 'same' });
  o.b_same = await ack(b, 'get_shared_memory', { key: 'same' });
  o.b_list_memory = await ack(b, 'list_shared_memory', {});
  o.b_cred = await ack(b, 'get_credentials', { credentialId: ids.cred });
  o.b_cred_service = await ack(b, 'get_credentials', { service: 'db' });
  o.b_file = await ack(b, 'download_file', { fileId: ids.file });
  o.b_share_file = await ack(b, 'share_file', { fileId: ids.file, targetAgentId: 'b-user' });
  o.b_skill = await ack(b, 'get_skill', { skillId: ids.skill });
  o.b_config = await ack(b, 'get_agent_config', { configId: ids.config });
  o.b_orch = await ack(b, 'get_orchestration', { orchestrationId: ids.orch });
  o.b_report = await ack(b, 'report_task_result', { orchestrationId: ids.orch, taskIndex: 0, status: 'completed' });
  o.b_delete_memory = await ack(b, 'delete_shared_memory', { key: 'same' });
  o.b_lists = {
    credentials: (await ack(b, 'list_credentials', {})).data.length,
    files: (await ack(b, 'list_files', {})).data.length,
    skills: (await ack(b, 'list_skills', {})).data.length,
    configs: (await ack(b, 'list_agent_configs', {})).data.length,
    orchestrations: (await ack(b, 'list_orchestrations', {})).data.length,
  };
  await sleep(200);
  o.b_got_exec = received(b, 'exec_task').length;
  o.b_events = [...new Set(b.log.map((e) => e.event))].sort();
  o.b_saw_a = seen(b).includes('tenant a data') || seen(b).includes(p.marker) || seen(b).includes('"value":"A"');
  o.a_same_after = await ack(a, 'get_shared_memory', { key: 'same' });
  a.close();
  b.close();
  return o;
};

// Everything the master sees: ids of each kind, and the shared keys.
scenarios.inventory = async (p) => {
  const m = await connect(p.url, { token: p.master });
  const ids = async (event, field) => (await ack(m, event, {})).data.map((x) => x[field]).sort();
  const o = {
    credentials: await ids('list_credentials', 'credentialId'),
    files: await ids('list_files', 'fileId'),
    skills: await ids('list_skills', 'skillId'),
    configs: await ids('list_agent_configs', 'configId'),
    orchestrations: await ids('list_orchestrations', 'orchestrationId'),
    keys: (await ack(m, 'list_shared_memory', {})).keys.sort(),
  };
  m.close();
  return o;
};

runScenario(scenarios, 110000);
