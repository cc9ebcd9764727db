// The type conf/grafana/batchgate.json must satisfy, built from Grafana's published types
// (@grafana/schema, pinned in package.json): the classic `Dashboard` model (schemaVersion
// 39-style JSON, what Dashboards -> Import accepts), with each panel's `options` and
// `fieldConfig.defaults.custom` narrowed to the published types of its plugin (timeseries,
// stat) instead of `Record<string, unknown>`, so their keys are checked too.
//
// `npm run check` (or: node gen.mjs && npx --no-install tsc -p .) fails on a misspelled key,
// a value of the wrong type or a value outside an enum. tests/it/dashboard.rs runs it.

import type {
  Dashboard,
  DataQuery,
  DataSourceRef,
  FieldConfig,
  FieldConfigSource,
  GridPos,
  Panel,
  RowPanel,
  VariableModel,
} from '@grafana/schema';
import type * as stat from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';
import type * as timeseries from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';
import { dashboard } from './dashboard.gen';

/**
 * How a Grafana type is spelled in JSON: a string enum (`FieldColorModeId`, `SortOrder`, ...)
 * becomes the union of its values ("palette-classic" | ...), which a JSON document can hold;
 * a TypeScript string enum type would accept only its own members. Everything else keeps its
 * shape, optional keys stay optional. Numeric enums are left alone: a number literal that is
 * one of their values is assignable already.
 */
export type Json<T> = 0 extends 1 & T
  ? T
  : T extends string
    ? `${T}`
    : T extends number | boolean | null | undefined
      ? T
      : T extends ReadonlyArray<infer U>
        ? Array<Json<U>>
        : T extends object
          ? { [K in keyof T]: Json<T[K]> }
          : T;

/**
 * A Prometheus query target. @grafana/schema publishes only the common `DataQuery` part of it
 * (the Prometheus data source's own query type lives in Grafana's source tree), so the
 * Prometheus keys are spelled out here, as the Prometheus query editor saves them.
 */
export interface PrometheusTarget extends Omit<DataQuery, 'datasource'> {
  datasource: DataSourceRef;
  expr: string;
  legendFormat?: string;
  range?: boolean;
  instant?: boolean;
  exemplar?: boolean;
  editorMode?: 'code' | 'builder';
  format?: 'time_series' | 'table' | 'heatmap';
  interval?: string;
  intervalFactor?: number;
}

/** `fieldConfig` whose `defaults.custom` is exactly the plugin's field config. */
type PluginFieldConfigSource<Custom> = Omit<FieldConfigSource, 'defaults'> & {
  defaults: Omit<FieldConfig, 'custom'> & { custom?: Custom };
};

/** What every panel of this dashboard has: identity, place, data source and queries. */
type PanelBase = Omit<
  Panel,
  'type' | 'options' | 'fieldConfig' | 'targets' | 'datasource' | 'gridPos' | 'id' | 'title'
> & {
  id: number;
  title: string;
  gridPos: GridPos;
  datasource: DataSourceRef;
  targets: PrometheusTarget[];
};

export type TimeSeriesPanel = PanelBase & {
  type: 'timeseries';
  options: timeseries.Options;
  fieldConfig: PluginFieldConfigSource<timeseries.FieldConfig>;
};

export type StatPanel = PanelBase & {
  type: 'stat';
  options: stat.Options;
  fieldConfig: PluginFieldConfigSource<never>;
};

export type Row = Omit<RowPanel, 'panels'> & {
  panels: Array<TimeSeriesPanel | StatPanel>;
};

/** The dashboard: Grafana's `Dashboard` with the panel kinds above and required templating. */
export type BatchgateDashboard = Omit<Dashboard, 'panels' | 'templating'> & {
  panels: Array<TimeSeriesPanel | StatPanel | Row>;
  templating: { list: VariableModel[] };
};

/** What ../batchgate.json must satisfy (dashboard.gen.ts checks it with `satisfies`). */
export type DashboardJson = Json<BatchgateDashboard>;

// The generated constant is also a plain Grafana `Dashboard` once enums are JSON-spelled:
// nothing in the narrowing above lets through what Grafana's own type would refuse.
export const asGrafanaDashboard: Json<Dashboard> = dashboard;
