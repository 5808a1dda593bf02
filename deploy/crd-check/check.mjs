// Validates the custom resources in rendered manifests against their CRD schemas
// (kubernetes-validate knows only the built-in kinds). Usage: node check.mjs FILE...
import fs from 'fs';
import * as yaml from 'js-yaml';
import * as keda from '@kubernetes-models/keda/keda.sh/v1alpha1';
import * as prom from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';

const models = {
  'keda.sh/v1alpha1/ScaledObject': keda.ScaledObject,
  'keda.sh/v1alpha1/TriggerAuthentication': keda.TriggerAuthentication,
  'monitoring.coreos.com/v1/ServiceMonitor': prom.ServiceMonitor,
};
let failed = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(fs.readFileSync(file, 'utf8'))) {
    if (!doc || !doc.apiVersion || doc.apiVersion.split('/').length < 2) continue;
    const key = `${doc.apiVersion}/${doc.kind}`;
    const Model = models[key];
    if (!Model) {
      if (!doc.apiVersion.includes('.') || doc.apiVersion.startsWith('apps/')) continue;
      if (/\.k8s\.io\//.test(doc.apiVersion)) continue;
      failed++;
      console.error(`FAIL ${file}: ${key}: no schema known for this custom resource`);
      continue;
    }
    try {
      new Model(doc).validate();
      console.log(`ok ${file}: ${doc.kind}/${doc.metadata.name} matches its CRD schema`);
    } catch (e) {
      failed++;
      console.error(`FAIL ${file}: ${doc.kind}/${doc.metadata.name}: ${e.message}`);
    }
  }
}
process.exit(failed ? 1 : 0);
