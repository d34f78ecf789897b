# Coze's own API (docs/api.md §13): replies through it (transport `coze`), the tool calls a reply
# paused for, and the meta_data a Coze client gives a conversation.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('sessions_admin', '0014_chatfile_end_user'),
        ('sessions_admin', '0014_reply_requires_action_status'),
    ]

    operations = [
        migrations.AddField(
            model_name='chatsession',
            name='meta_data',
            field=models.JSONField(blank=True, db_default={}, default=dict),
        ),
        migrations.AddField(
            model_name='reply',
            name='required_action',
            field=models.JSONField(blank=True, editable=False, null=True),
        ),
        migrations.AlterField(
            model_name='reply',
            name='transport',
            field=models.CharField(choices=[('sync', 'Sync API'), ('sse', 'SSE'), ('websocket', 'WebSocket'), ('compat', 'Compatibility paths'), ('openai', 'OpenAI'), ('coze', 'Coze API')], max_length=16),
        ),
    ]
